"""The model registry: models, versions and their artifacts, aliases, lineage, export, deployments."""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tessera.calls import (
    C,
    Call,
    Chain,
    Decided,
    Op,
    Pages,
    Part,
    Resumable,
    ResumingDownload,
    SeqCursor,
    Upload,
    call,
    listing,
    stream,
)
from tessera.ensembles import Member, ensemble_spec
from tessera.errors import InvalidArgument
from tessera.messages import INT64_MAX, from_dict, version_number, version_ref
from tessera.state_words import number_word
from tessera.transfer import (
    CHUNK_BYTES,
    Progress,
    ResumableDownloadSink,
    SinkInDirectory,
    check_chunk_size,
    file_chunks,
    file_digest,
    is_download_directory,
)
from tessera.transport import MODEL_CALL_TIMEOUT_S, AioConnection, Connection, RetryPolicy, timeout_or
from tessera.v1 import architecture_pb2, common_pb2
from tessera.v1 import registry_pb2 as pb

S = "Registry"
# An artifact up to this size is pushed in one message (UploadVersionInline): a registration of
# a small version then costs the client and the daemon less than a stream does, and any daemon's
# max_message_size (64 MiB by default) takes it.
INLINE_BYTES = 64 * 2**10

FORMAT_BY_SUFFIX = {".onnx": "onnx", ".safetensors": "safetensors"}
"""An artifact's format (push's `format=`) by its file's suffix."""

SUFFIX_BY_FORMAT = {
    pb.ARTIFACT_FORMAT_SAFETENSORS: ".safetensors",
    pb.ARTIFACT_FORMAT_ONNX: ".onnx",
    pb.ARTIFACT_FORMAT_ENSEMBLE: ".json",
}
"""The file suffix of each artifact format, for a download's default name and the CLI's check of a given one."""

RUN_ARTIFACT_PREFIX = "runs:/"
"""push's source form for a run's artifact, as MLflow's: "runs:/RUN_ID/model.onnx"."""

VersionSelector = int | str
"""A version by number (int) or by alias (str)."""

# Route weights are int32 in the protos.
INT32_MAX = 2**31 - 1


def ref(model: str, selector: VersionSelector | None) -> common_pb2.VersionRef:
    """VersionRef from a number or an alias; None: the RPC's default ("latest")."""
    return version_ref(model, selector)


def default_file_name(version: pb.ModelVersion) -> str:
    """The file a download of `version` writes, given a directory (or, in the CLI, no name):
    "mlp-v3.onnx"."""
    return f"{version.model}-v{version.version}{SUFFIX_BY_FORMAT.get(version.format, '')}"


def version_name(version: pb.ModelVersion) -> str:
    """How a download's messages and its partial file's record name a version: "mlp v3"."""
    return f"{version.model} v{version.version}"


def _route_target(target: pb.Route | pb.Shadow, selector: VersionSelector, field: str) -> None:
    if isinstance(selector, str):
        target.alias = selector
    else:
        target.version = version_number(f"{field}.version", selector)


@dataclass(frozen=True)
class VersionFile:
    """One version of `client.models.push_batch`: what `push` takes for one file. `set_alias`
    moves that alias to the new version (`alias`, its old name, still does, with a
    DeprecationWarning, as push's does; TypeError for both)."""

    name: str
    path: str | Path
    format: str | None = None
    architecture: architecture_pb2.Architecture | Mapping[str, Any] | None = None
    signature: common_pb2.Signature | Mapping[str, Any] | None = None
    create: bool = True
    alias: str | None = None
    description: str = ""
    params: Mapping[str, str] | None = None
    metrics: Mapping[str, float] | None = None
    tags: Mapping[str, str] | None = None
    # Last, so that a VersionFile made with its fields by position still reads them as before.
    set_alias: str | None = None

    def __post_init__(self) -> None:
        # Past moved_alias, this method and the dataclass's __init__: where the VersionFile is made.
        moved_alias("push_batch", self.set_alias, self.alias, "VersionFile(alias=...)", stacklevel=4)

    @property
    def moved_alias(self) -> str | None:
        """The alias the new version takes: `set_alias`, or `alias`, its old name."""
        return self.alias if self.set_alias is None else self.set_alias


class Models(Part[C]):
    """`client.models`: the registry. Versions are chosen by number (int) or alias (str);
    leaving the version out means "latest"."""

    @call
    def create(
        self,
        name: str,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,
    ) -> Op[pb.Model]:
        """Create an empty model (AlreadyExists if the name is taken)."""
        return Op(
            S,
            "CreateModel",
            pb.CreateModelRequest(name=name, description=description, tags=tags),
            timeout=timeout,
        )

    @call
    def get(self, name: str, *, timeout: float | None = None) -> Op[pb.Model]:
        """A model with its latest version number and aliases."""
        return Op(S, "GetModel", pb.GetModelRequest(name=name), timeout=timeout)

    @listing
    def list(
        self,
        prefix: str = "",
        tags: Mapping[str, str] | None = None,
        page_size: int = 0,
        *,
        timeout: float | None = None,
    ) -> Pages[pb.Model]:
        """Every model (optionally by name prefix and tags), fetched page by page as you iterate."""
        # Read once, here: a dict changed later does not change what the listing asks.
        request = pb.ListModelsRequest(name_prefix=prefix, tags=tags, page_size=page_size)

        def page(token: str) -> Op[pb.ListModelsResponse]:
            paged = pb.ListModelsRequest()
            paged.CopyFrom(request)
            paged.page_token = token
            return Op(S, "ListModels", paged, timeout=timeout)

        return Pages(page, "models")

    @call
    def update(
        self,
        name: str,
        description: str | None = None,
        set_tags: Mapping[str, str] | None = None,
        remove_tags: Sequence[str] = (),
        *,
        timeout: float | None = None,
    ) -> Op[pb.Model]:
        """Change a model's description and tags."""
        request = pb.UpdateModelRequest(name=name, set_tags=set_tags, remove_tags=list(remove_tags))
        if description is not None:
            request.description = description
        return Op(S, "UpdateModel", request, timeout=timeout)

    @call
    def delete(self, name: str, force: bool = False, *, timeout: float | None = None) -> Op[int]:
        """Delete a model with all its versions; returns how many versions went. `force` also
        removes aliases and deployments that point into it. FailedPrecondition, force or not,
        while an ensemble version of another model has one of its versions as a member.
        Versions of other models derived from its versions keep naming them in their lineage,
        marked deleted (`lineage.parent_deleted`)."""
        request = pb.DeleteModelRequest(name=name, force=force)
        return Op(S, "DeleteModel", request, lambda response: response.deleted_versions, timeout=timeout)

    @call
    def push(
        self,
        name: str,
        path: str | Path,
        *,
        format: str | None = None,
        architecture: architecture_pb2.Architecture | Mapping[str, Any] | None = None,
        signature: common_pb2.Signature | Mapping[str, Any] | None = None,
        create: bool = True,
        set_alias: str | None = None,
        description: str = "",
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        progress: Progress | None = None,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
        alias: str | None = None,
        run_id: str | None = None,
    ) -> Call[pb.ModelVersion]:
        """Register an artifact file as the model's next version: an ONNX model, or safetensors
        weights with the `architecture` that builds them. Streamed in chunks, or sent in one
        message when at most INLINE_BYTES; `progress(done, total)` is called after each chunk
        read. `set_alias` moves that alias to the new version (`alias`, its old name, still does,
        with a DeprecationWarning). `run_id`: the tracked run the version came from, kept in its
        lineage (`lineage.run_id`, with the run's experiment) as a trained version's is; the
        daemon checks it (NotFound for no such run, FailedPrecondition for a deleted one, before
        any byte is stored). `path` "runs:/RUN_ID/PATH" (MLflow's form) registers an artifact of
        that run: downloaded to a temporary directory (TMPDIR's, which needs the artifact's size
        free), verified, pushed with `run_id` that run."""
        check_artifact_path(path)
        moved = moved_alias("push", set_alias, alias)
        check_chunk_size(chunk_size)
        timeout = timeout_or(timeout, self._conn.transfer_timeout)

        def upload(artifact: Path, run: str | None) -> Upload[pb.ModelVersion]:
            def requests() -> pb.UploadVersionInlineRequest | Iterator[pb.UploadVersionRequest]:
                header = upload_header(
                    name,
                    artifact,
                    format=format,
                    architecture=architecture,
                    signature=signature,
                    create=create,
                    alias=moved,
                    description=description,
                    params=params,
                    metrics=metrics,
                    tags=tags,
                )
                header.run_id = run or ""
                if header.size_bytes <= INLINE_BYTES:
                    data = b"".join(file_chunks(artifact, header.size_bytes, chunk_size, progress))
                    return pb.UploadVersionInlineRequest(header=header, artifact=data)
                return upload_requests(header, artifact, chunk_size, progress)

            return Upload(S, "UploadVersion", requests, timeout, inline_method="UploadVersionInline")

        if not (isinstance(path, str) and path.startswith(RUN_ARTIFACT_PREFIX)):
            local = Path(path)
            onnx_file = (format or FORMAT_BY_SUFFIX.get(local.suffix.lower()) or "").lower() == "onnx"
            if onnx_file and onnx_sidecar(local).is_file():
                return InlinedOnnx(local, lambda file: upload(file, run_id))
            return upload(local, run_id)
        source_run, artifact_path = run_artifact(path)
        if run_id is not None and run_id != source_run:
            raise ValueError(f"run_id {run_id!r} is not the run of {path!r}; leave run_id out")
        # Imported here: training's module is the larger, and push from a run its one use.
        from tessera.training import Training

        def download(directory: Path) -> Call[Any]:
            target = directory / PurePosixPath(artifact_path).name
            return Training(self._conn)._artifact_to(source_run, artifact_path, target, chunk_size, timeout)

        return FromRunArtifact(download, lambda file: upload(file, source_run))

    @call
    def push_batch(
        self, versions: Sequence[VersionFile], *, timeout: float | None = None
    ) -> Op[builtins.list[pb.ModelVersion]]:
        """Register many small artifact files in one call (UploadVersionBatch), all or nothing:
        the new versions in the order given, or the error of the first file the daemon
        refuses ("items[i]: ..."), with none of them registered. At most 1000 files, all
        together within the daemon's max_message_size; versions of one model are numbered in
        the order given. Where thousands of small versions are registered, a call per hundred
        or so costs the daemon a fraction of what `push` per file does."""
        items = []
        for version in versions:
            path = Path(version.path)
            data = path.read_bytes()
            header = upload_header(
                version.name,
                path,
                format=version.format,
                architecture=version.architecture,
                signature=version.signature,
                create=version.create,
                alias=version.moved_alias,
                description=version.description,
                params=version.params,
                metrics=version.metrics,
                tags=version.tags,
            )
            # Declare the bytes sent, read once, even if the file changes meanwhile.
            header.sha256, header.size_bytes = hashlib.sha256(data).hexdigest(), len(data)
            items.append(pb.UploadVersionInlineRequest(header=header, artifact=data))
        return Op(
            S,
            "UploadVersionBatch",
            pb.UploadVersionBatchRequest(items=items),
            lambda response: list(response.versions),
            timeout_or(timeout, self._conn.transfer_timeout),
        )

    @call
    def register_ensemble(
        self,
        name: str,
        members: Sequence[Member],
        combine: str = "mean",
        *,
        weights: Sequence[float] | None = None,
        stacking: Mapping[str, Any] | None = None,
        create: bool = True,
        set_alias: str | None = None,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        timeout: float | None = None,
        alias: str | None = None,
    ) -> Upload[pb.ModelVersion]:
        """Register an ensemble of versions as the model's next version, served like any other.

        `members`: ("model", version) pairs or "model:version" strings, sharing one signature.
        `combine`: "mean" (of the members' outputs, e.g. probabilities), "vote" (each member's
        argmax is a vote; the answer is each class's share), "weighted_mean" (with `weights`, one
        per member) or "stacking" (with `stacking`, a linear combiner from `tessera.ensembles.fit_stacking`).
        `set_alias` moves that alias to the new version (`alias`, its old name, still does, with a
        DeprecationWarning).
        """
        moved = moved_alias("register_ensemble", set_alias, alias)
        spec = ensemble_spec(members, combine, weights=weights, stacking=stacking)

        def requests() -> Iterator[pb.UploadVersionRequest]:
            header = pb.UploadVersionHeader(
                model=name,
                create_model=create,
                format=pb.ARTIFACT_FORMAT_ENSEMBLE,
                description=description,
                tags=tags,
                sha256=hashlib.sha256(spec).hexdigest(),
                size_bytes=len(spec),
                alias=moved or "",
            )
            yield pb.UploadVersionRequest(header=header)
            yield pb.UploadVersionRequest(chunk=spec)

        return Upload(S, "UploadVersion", requests, timeout_or(timeout, self._conn.transfer_timeout))

    @call
    def download(
        self,
        name: str,
        path: str | Path,
        version: VersionSelector | None = None,
        progress: Progress | None = None,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
        overwrite: bool = True,
        resume: bool = False,
        alias: str | None = None,
    ) -> Call[pb.ModelVersion]:
        """Write a version's artifact to `path`, verified against its sha256 (DataLoss if not);
        it takes the name only once whole. A directory `path` (one that exists, or a str ending
        in "/", made where missing as the file is, and removed again where the download fails
        leaving it empty) gets the file named as the CLI names it, "MODEL-vN.onnx"
        (.safetensors, .json for an ensemble), of the version `version` picks when asked. `overwrite` False: a file at `path` is refused with
        FileExistsError. A stream that breaks (UNAVAILABLE: connection cut, daemon restarting)
        is made again within the client's RetryPolicy and goes on from the bytes written, of the
        version the first stream sent (`alias="prod"` is `version="prod"`, as predict's). One that gives up or times out keeps them in a hidden
        partial file beside `path` (one that ends any other way removes them, unless asked to
        `resume`: it keeps them, those an earlier download kept with them, however it ends but
        in a file whose sha256 is not the version's, its error saying how many), with a record of
        the version and the artifact's sha256 they are of; `resume` True goes on from them where
        the version asked for has that artifact (ValueError where not, leaving them as they
        are), and without `resume` the download starts again from the first byte. A partial file
        there that is not this user's own, or is another name of a file too, is refused with
        ValueError."""
        if alias is not None:
            if version is not None:
                raise ValueError(f"give version ({version!r}) or alias ({alias!r}), not both")
            version = alias

        def into_directory(picked: pb.ModelVersion) -> ResumingDownload[pb.ModelVersion]:
            file = Path(path) / default_file_name(picked)
            return self._download(
                picked.model,
                file,
                picked.version,
                progress,
                chunk_size,
                timeout,
                overwrite,
                resume,
                SinkInDirectory,
            )

        def by_path() -> Call[pb.ModelVersion]:
            if not is_download_directory(path):
                return self._download(
                    name, Path(path), version, progress, chunk_size, timeout, overwrite, resume
                )
            resolve: Op[pb.ModelVersion] = Op(
                S, "GetVersion", pb.GetVersionRequest(ref=ref(name, version)), timeout=timeout
            )
            return Chain(resolve, into_directory)

        return Decided(by_path)

    def _download(
        self,
        name: str,
        path: Path,
        version: VersionSelector | None,
        progress: Progress | None,
        chunk_size: int,
        timeout: float | None,
        overwrite: bool,
        resume: bool,
        sink: type[ResumableDownloadSink[pb.ModelVersion]] = ResumableDownloadSink,
    ) -> ResumingDownload[pb.ModelVersion]:
        asked = ref(name, version)

        def request(header: pb.ModelVersion | None, offset: int) -> pb.DownloadVersionRequest:
            # After the first stream, the version it sent: an alias may have moved by then.
            pinned = asked if header is None else version_ref(header.model, version=header.version)
            return pb.DownloadVersionRequest(ref=pinned, chunk_size=chunk_size, offset=offset)

        return ResumingDownload(
            S,
            "DownloadVersion",
            request,
            Op(S, "GetVersion", pb.GetVersionRequest(ref=asked), timeout=timeout),
            timeout_or(timeout, self._conn.transfer_timeout),
            lambda: sink(path, progress, overwrite, resume, version_name),
            self._conn.retry,
            f"downloading {name}" + ("" if version is None else f" version {version}"),
        )

    @call
    def version(
        self, name: str, version: VersionSelector | None = None, *, timeout: float | None = None
    ) -> Op[pb.ModelVersion]:
        """One version by number or alias; "latest" when `version` is None."""
        return Op(S, "GetVersion", pb.GetVersionRequest(ref=ref(name, version)), timeout=timeout)

    @listing
    def versions(
        self, name: str, page_size: int = 0, *, timeout: float | None = None
    ) -> Pages[pb.ModelVersion]:
        """The model's versions, newest first."""

        def page(token: str) -> Op[pb.ListVersionsResponse]:
            return Op(
                S,
                "ListVersions",
                pb.ListVersionsRequest(model=name, page_size=page_size, page_token=token),
                timeout=timeout,
            )

        return Pages(page, "versions")

    @call
    def delete_version(self, name: str, version: int, *, timeout: float | None = None) -> Op[None]:
        """Delete one version (FailedPrecondition while an alias, a deployment or an ensemble
        version, as a member, uses it). Versions derived from it keep naming it in their
        lineage, marked deleted (`lineage.parent_deleted`). `version` is a number: an alias
        (which would delete where it points) is a ValueError."""
        request = pb.DeleteVersionRequest(model=name, version=version_number("version", version, name))
        return Op(S, "DeleteVersion", request, lambda _: None, timeout=timeout)

    @call
    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        expected_version: int | None = None,
        *,
        timeout: float | None = None,
    ) -> Op[pb.Alias]:
        """Point `alias` at `version`; with `expected_version`, only if it points there now
        (0: only if it does not exist yet). Where the move leaves the deployment's routes (or its
        shadow) resolving to one version, the answer's `deployment_warnings` say so. Both
        versions are numbers: an alias is a ValueError saying how to read its number."""
        request = pb.SetAliasRequest(
            model=name, alias=alias, version=version_number("version", version, name)
        )
        if expected_version is not None:
            request.expected_version = version_number("expected_version", expected_version, name)
        return Op(S, "SetAlias", request, timeout=timeout)

    @call
    def alias(self, name: str, alias: str, *, timeout: float | None = None) -> Op[pb.Alias]:
        """Where an alias points."""
        return Op(S, "GetAlias", pb.GetAliasRequest(model=name, alias=alias), timeout=timeout)

    @listing
    def aliases(self, name: str, page_size: int = 0, *, timeout: float | None = None) -> Pages[pb.Alias]:
        """The model's aliases (each an Alias: `alias`, `version`), in order of name with "latest"
        last: a `tessera.Listing` that fetches a page at a time as it is read, and asks again
        each time, as every list here is (for a dict,
        `{a.alias: a.version for a in client.models.aliases(name)}`)."""

        def page(token: str) -> Op[pb.ListAliasesResponse]:
            request = pb.ListAliasesRequest(model=name, page_size=page_size, page_token=token)
            return Op(S, "ListAliases", request, timeout=timeout)

        return Pages(page, "aliases")

    @call
    def delete_alias(self, name: str, alias: str, *, timeout: float | None = None) -> Op[None]:
        """Remove an alias."""
        return Op(
            S, "DeleteAlias", pb.DeleteAliasRequest(model=name, alias=alias), lambda _: None, timeout=timeout
        )

    @listing
    def alias_history(
        self, name: str, alias: str = "", page_size: int = 0, *, timeout: float | None = None
    ) -> Pages[pb.AliasEvent]:
        """Every move of the model's aliases (or one alias), newest first."""

        def page(token: str) -> Op[pb.ListAliasHistoryResponse]:
            request = pb.ListAliasHistoryRequest(
                model=name, alias=alias, page_size=page_size, page_token=token
            )
            return Op(S, "ListAliasHistory", request, timeout=timeout)

        return Pages(page, "events")

    @call
    def lineage(
        self, name: str, version: VersionSelector | None = None, *, timeout: float | None = None
    ) -> Op[pb.GetLineageResponse]:
        """Where a version came from (run, datasets, parent; `parent_deleted` is set once the
        parent is deleted) and the versions derived from it."""
        return Op(S, "GetLineage", pb.GetLineageRequest(ref=ref(name, version)), timeout=timeout)

    @call
    def compare(
        self,
        name: str,
        a: VersionSelector,
        b: VersionSelector,
        model_b: str | None = None,
        *,
        timeout: float | None = None,
    ) -> Op[pb.CompareVersionsResponse]:
        """Differences between two versions (of one model, or of `name` and `model_b`)."""
        request = pb.CompareVersionsRequest(a=ref(name, a), b=ref(model_b or name, b))
        return Op(S, "CompareVersions", request, timeout=timeout)

    @call
    def export_onnx(
        self,
        name: str,
        version: VersionSelector | None = None,
        *,
        opset: int = 0,
        conv4d: str = "auto",
        set_alias: str | None = None,
        description: str = "",
        timeout: float | None = None,
        alias: str | None = None,
    ) -> Op[pb.ExportOnnxResponse]:
        """Export a safetensors version to ONNX as a new version; `set_alias` moves to the export
        (`alias`, its old name, still does, with a DeprecationWarning).
        An export the model already holds (same source, same bytes) is returned with `reused` set
        and its own description: versions are immutable, so `description` is not applied then."""
        moved = moved_alias("export_onnx", set_alias, alias)
        request = pb.ExportOnnxRequest(
            source=ref(name, version), opset=opset, conv4d=conv4d, alias=moved or "", description=description
        )
        return Op(
            S,
            "ExportOnnx",
            request,
            timeout=timeout_or(timeout, max(self._conn.timeout, MODEL_CALL_TIMEOUT_S)),
        )

    @call
    def deploy(
        self,
        name: str,
        routes: Mapping[VersionSelector, int],
        shadow: VersionSelector | None = None,
        shadow_percent: int = 100,
        comment: str = "",
        expected_revision: int | None = None,
        *,
        timeout: float | None = None,
    ) -> Op[pb.Deployment]:
        """Route un-pinned Predict calls: `routes` maps a version or alias to a percent of traffic
        (summing to 100); `shadow` gets a copy of `shadow_percent` (1..100) of the requests other
        versions answer (one its own version answers is not copied to it again). With
        `expected_revision`, only if the model's newest deployment revision is that one (0: never
        deployed), else FailedPrecondition. InvalidArgument for a weight the message's int32 fields
        cannot hold, or a `shadow_percent` outside 1..100."""
        request = pb.DeployRequest(model=name, comment=comment)
        if expected_revision is not None:
            request.expected_revision = _expected_revision(expected_revision)
        for i, (target, weight) in enumerate(routes.items()):
            # The daemon checks 1..100 with these words; past int32 the message cannot carry it.
            if not -INT32_MAX - 1 <= weight <= INT32_MAX:
                raise InvalidArgument(f"routes[{i}].weight must be 1..100, got {weight}")
            _route_target(request.routes.add(weight=weight), target, f"routes[{i}]")
        if shadow is not None:
            # Checked here to name this argument (the daemon names its field, shadow.percent), and
            # since 0 cannot be sent: on the wire it means unset, which the daemon reads as 100.
            if not 1 <= shadow_percent <= 100:
                hint = "; leave the shadow out to copy no requests" if shadow_percent == 0 else ""
                raise InvalidArgument(f"shadow_percent must be 1..100, got {shadow_percent}{hint}")
            _route_target(request.shadow, shadow, "shadow")
            request.shadow.percent = shadow_percent
        return Op(S, "Deploy", request, timeout=timeout)

    @call
    def deployment(self, name: str, *, timeout: float | None = None) -> Op[pb.Deployment]:
        """The model's current deployment."""
        return Op(S, "GetDeployment", pb.GetDeploymentRequest(model=name), timeout=timeout)

    @listing
    def deployments(
        self, name: str, page_size: int = 0, *, timeout: float | None = None
    ) -> Pages[pb.Deployment]:
        """Deployment history, newest first."""

        def page(token: str) -> Op[pb.ListDeploymentsResponse]:
            request = pb.ListDeploymentsRequest(model=name, page_size=page_size, page_token=token)
            return Op(S, "ListDeployments", request, timeout=timeout)

        return Pages(page, "deployments")

    @call
    def rollback(
        self, name: str, expected_revision: int | None = None, *, timeout: float | None = None
    ) -> Op[pb.Deployment]:
        """Restore the deployment before the current one (as a new revision); rolling back the
        first leaves none (the returned revision has `undeployed` set). With `expected_revision`,
        only if the model's newest deployment revision is that one, else FailedPrecondition: two
        callers rolling back one bad revision at once then restore one revision, not two."""
        request = pb.RollbackRequest(model=name)
        if expected_revision is not None:
            request.expected_revision = _expected_revision(expected_revision)
        return Op(S, "Rollback", request, timeout=timeout)

    @stream
    def watch_changes(
        self, from_seq: int = 1, follow: bool = True, timeout: float | None = None
    ) -> Resumable[pb.RegistryChange]:
        """The registry's changes, numbered from 1 in commit order: each names its model, what
        changed, and the model's serving state after it (latest version, aliases, deployment, and
        what serving needs of the versions they resolve to: read a version's params, metrics and
        lineage with `version`); commits to one model in quick succession may be one change.
        Every commit made before the watch began is in it. Starts at `from_seq` (1, or 0 too: the
        first change) and, with `follow`, goes on with each new change as it is committed;
        without, ends at the newest change there was when it began. A cut connection or a daemon restart is resumed from the last change seen. `timeout`
        bounds the whole watch (None: no deadline). FailedPrecondition when `from_seq` is past
        the newest change + 1."""
        cursor = ChangeCursor(from_seq, self._conn.retry, timeout)
        if follow:
            return Resumable(S, "WatchChanges", cursor, _change)
        return Resumable(S, "WatchChanges", cursor, _change, until=_caught_up)


def _expected_revision(revision: int) -> int:
    """`revision` when the int64 field can carry it (the daemon checks the rest); else
    InvalidArgument, where protobuf would raise a bare ValueError."""
    if not -INT64_MAX - 1 <= revision <= INT64_MAX:
        raise InvalidArgument(
            f"expected_revision must be a deployment revision 0..{INT64_MAX}, got {revision}"
        )
    return revision


class ChangeCursor(SeqCursor):
    """Where a watch of the registry's changes has got to (see `SeqCursor` for what is resumed)."""

    def __init__(self, from_seq: int, retry: RetryPolicy, timeout: float | None) -> None:
        super().__init__("the registry's changes", from_seq, retry, timeout)

    def request(self) -> pb.WatchChangesRequest:
        return pb.WatchChangesRequest(from_seq=self.next_seq)

    def accept(self, response: pb.WatchChangesResponse) -> bool:
        """Record a change; False for one the caller already has, and for the caught-up mark."""
        return response.HasField("change") and self.accept_seq(response.change.seq)


def _change(response: pb.WatchChangesResponse) -> pb.RegistryChange:
    return response.change


def _caught_up(response: pb.WatchChangesResponse) -> bool:
    return response.HasField("caught_up")


def moved_alias(
    method: str, set_alias: str | None, alias: str | None, given: str = "", stacklevel: int = 4
) -> str | None:
    """The alias `method` moves to its new version: `set_alias`, or `alias`, its old name (as the
    CLI's --alias was, which now selects a version), with a DeprecationWarning naming `given`
    (default: `models.METHOD(alias=...)`); TypeError for both. `stacklevel` reaches the caller's
    line: by default, past this function, the method that builds the call and the client's
    wrapper running it."""
    if alias is None:
        return set_alias
    if set_alias is not None:
        raise TypeError(f"models.{method}: pass set_alias= alone; alias= is its old name")
    warnings.warn(
        f"{given or f'models.{method}(alias=...)'} is deprecated: use set_alias=, which moves the alias "
        "to the new version as alias= did",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    return alias


def run_artifact(source: str) -> tuple[str, str]:
    """(run id, artifact path) of "runs:/RUN_ID/PATH"; ValueError saying the form otherwise."""
    run_id, _, artifact_path = source.removeprefix(RUN_ARTIFACT_PREFIX).partition("/")
    if not run_id or not artifact_path or artifact_path.endswith("/"):
        raise ValueError(
            f"{source!r}: a run's artifact is named runs:/RUN_ID/PATH, e.g. runs:/{run_id or 'RUN_ID'}/model.onnx "
            "(the path as list_artifacts lists it)"
        )
    # Its last segment names the file downloaded: "..", say, would name the temporary
    # directory's parent. The daemon stores no path with such segments.
    odd = [segment for segment in artifact_path.split("/") if segment in ("", ".", "..")]
    if odd:
        raise ValueError(
            f"{source!r}: the artifact path {artifact_path!r} has a {odd[0]!r} segment, which no stored "
            "artifact has; give the path as list_artifacts lists it, e.g. runs:/RUN_ID/model.onnx"
        )
    return run_id, artifact_path


@dataclass(frozen=True)
class FromRunArtifact(Call[pb.ModelVersion]):
    """push of "runs:/RUN_ID/PATH": `download` writes the artifact into a temporary directory,
    then `push` registers the file it wrote; the directory goes either way. That directory is
    the system's (TMPDIR chooses it), which needs the artifact's size free."""

    download: Callable[[Path], Call[Any]]
    push: Callable[[Path], Call[pb.ModelVersion]]

    def run(self, conn: Connection) -> pb.ModelVersion:
        with tempfile.TemporaryDirectory(prefix="tessera-push-") as directory:
            file = self.download(Path(directory)).run(conn)
            return self.push(file).run(conn)

    async def run_async(self, conn: AioConnection) -> pb.ModelVersion:
        with tempfile.TemporaryDirectory(prefix="tessera-push-") as directory:
            file = await self.download(Path(directory)).run_async(conn)
            return await self.push(file).run_async(conn)


# Protobuf's limit on one serialized message, so on an ONNX model kept in one file.
ONNX_INLINE_LIMIT = 2**31 - 1


def onnx_sidecar(path: Path) -> Path:
    """Where torch.onnx.export (external_data=True, its default) writes a model's tensors."""
    return path.with_name(path.name + ".data")


def inline_external_data(source: Path, directory: Path) -> Path:
    """`source` with the tensors of its sidecar inlined, written to `directory` under its name:
    the daemon takes an ONNX model as one self-contained file."""
    sidecar = onnx_sidecar(source)
    size = source.stat().st_size + sidecar.stat().st_size
    if size > ONNX_INLINE_LIMIT:
        raise ValueError(
            f"{source}: with its tensors from {sidecar.name} the model is {size:,} bytes, past the 2 GiB "
            "an ONNX model in one file can hold; tesserad takes one file, so push a smaller model "
            "(fewer or float16 weights)"
        )
    try:
        import onnx
    except ImportError:
        raise ValueError(
            f"{source}: its tensors are in {sidecar.name}; install onnx (pip install onnx) to have push "
            "put them in one file, or export it again with torch.onnx.export(..., external_data=False)"
        ) from None
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import load_external_data_for_model

    try:
        model = onnx.load(str(source), load_external_data=False)
    except DecodeError as exc:
        raise ValueError(f"{source}: not an ONNX model ({exc or 'its protobuf does not parse'})") from None
    # onnx reads whatever file each tensor's location names: a model could have push read (and
    # upload) any file beside it, or above it, so only its own sidecar is read.
    for location in _external_locations(model):
        if location != sidecar.name:
            raise ValueError(
                f"{source}: a tensor's data is in {location!r}; push reads a model's tensors from "
                f"{sidecar.name} alone, so export it again with its tensors there (or inline)"
            )
    try:
        load_external_data_for_model(model, str(source.parent))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ValueError(f"{source}: its tensors cannot be read from {sidecar.name}: {exc}") from None
    target = directory / source.name
    target.write_bytes(model.SerializeToString())
    return target


def _external_locations(model: Any) -> Iterator[str]:
    """The `location` of every tensor of `model` whose data is in an external file: its graph's
    (and subgraphs') initializers, sparse initializers and tensor attributes, its functions'."""
    import onnx

    def sparse(tensor: Any) -> Iterator[Any]:
        yield tensor.values
        yield tensor.indices

    def in_nodes(nodes: Any) -> Iterator[Any]:
        for node in nodes:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("sparse_tensor"):
                    yield from sparse(attribute.sparse_tensor)
                for each in attribute.sparse_tensors:
                    yield from sparse(each)
                if attribute.HasField("g"):
                    yield from in_graph(attribute.g)
                for subgraph in attribute.graphs:
                    yield from in_graph(subgraph)

    def in_graph(graph: Any) -> Iterator[Any]:
        yield from graph.initializer
        for each in graph.sparse_initializer:
            yield from sparse(each)
        yield from in_nodes(graph.node)

    every = [in_graph(model.graph), *(in_nodes(function.node) for function in model.functions)]
    for tensors in every:
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                yield {entry.key: entry.value for entry in tensor.external_data}.get("location", "")


@dataclass(frozen=True)
class InlinedOnnx(Call[pb.ModelVersion]):
    """push of an ONNX model whose tensors lie in a sidecar file (model.onnx.data): the model with
    them inlined is written to a temporary directory (TMPDIR's) and pushed from there."""

    source: Path
    push: Callable[[Path], Call[pb.ModelVersion]]

    def run(self, conn: Connection) -> pb.ModelVersion:
        with tempfile.TemporaryDirectory(prefix="tessera-push-") as directory:
            return self.push(inline_external_data(self.source, Path(directory))).run(conn)

    async def run_async(self, conn: AioConnection) -> pb.ModelVersion:
        with tempfile.TemporaryDirectory(prefix="tessera-push-") as directory:
            file = await asyncio.to_thread(inline_external_data, self.source, Path(directory))
            return await self.push(file).run_async(conn)


# What push says to do with a torch model held in memory, as `tessera models push` says it for a .pt.
_TORCH_MODEL_FIX = (
    "export it to ONNX in one file, torch.onnx.export(model, (example_input,), 'model.onnx', "
    "external_data=False), and push 'model.onnx'; or save its weights, "
    "safetensors.torch.save_file(model.state_dict(), 'model.safetensors'), and push that file with "
    "architecture= naming what builds them (for a module of your own, the README's "
    '"Bring your own model")'
)


# Suffixes of torch's own files: pickles (torch.save), TorchScript (torch.jit.save, its lite
# interpreter's .ptl) and torch.export programs (.pt2). The daemon loads none of them.
TORCH_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt")
TORCHSCRIPT_SUFFIXES = (".torchscript", ".ptl")
TORCH_EXPORT_SUFFIXES = (".pt2",)


def torch_file_kind(path: Path) -> str | None:
    """ "TorchScript", "torch.export" or "pickle" for a file of torch's, None for another: told by
    the names of its zip's entries (TorchScript writes `<name>/code/...` and `<name>/constants.pkl`,
    torch.export `<name>/archive_format`), else by its suffix. Nothing of the file is loaded."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = {name.split("/")[1] for name in archive.namelist() if name.count("/") >= 1}
    except (OSError, zipfile.BadZipFile):
        entries = set()
    suffix = path.suffix.lower()
    if "archive_format" in entries or suffix in TORCH_EXPORT_SUFFIXES:
        return "torch.export"
    if {"code", "constants.pkl"} & entries or suffix in TORCHSCRIPT_SUFFIXES:
        return "TorchScript"
    return "pickle" if suffix in TORCH_PICKLE_SUFFIXES else None


def torch_file_advice(path: Path, kind: str, weights_with: str) -> str:
    """What to do with a torch file of `kind` (torch_file_kind) instead of pushing it; `weights_with`
    says how a push names what builds safetensors weights (the CLI's flag, the SDK's keyword:
    "architecture= naming what builds"). The exporters named are those that take each (torch 2.13: the default, torch.export
    based, refuses a ScriptModule; the TorchScript one takes it)."""
    name = path.name
    weights = f"pushed with {weights_with} them"
    if kind == "TorchScript":
        return (
            f"{path}: a TorchScript archive is not served (tesserad serves ONNX, or safetensors weights with "
            "their architecture); export it to ONNX in one file with torch's TorchScript exporter, "
            f"torch.onnx.export(torch.jit.load('{name}'), (example_input,), 'model.onnx', dynamo=False, "
            "input_names=['input'], dynamic_axes={'input': {0: 'batch'}}), and push model.onnx; or save its "
            f"weights, safetensors.torch.save_file(torch.jit.load('{name}').state_dict(), 'model.safetensors'), "
            + weights
        )
    if kind == "torch.export":
        return (
            f"{path}: a torch.export program is not served (tesserad serves ONNX, or safetensors weights with "
            f"their architecture); export it to ONNX in one file, torch.onnx.export(torch.export.load('{name}'), "
            "f='model.onnx', external_data=False) (its batch dimension is dynamic where torch.export.export "
            "was given dynamic_shapes), and push model.onnx; or save its weights, "
            f"safetensors.torch.save_file(torch.export.load('{name}').state_dict, 'model.safetensors'), "
            + weights
        )
    return (
        f"{path}: a torch pickle ({path.suffix.lower()}) is not loaded: unpickling runs the code it carries; "
        "export the model to ONNX in one file (torch.onnx.export(model, (example_input,), 'model.onnx', "
        "external_data=False)) or save its weights (safetensors.torch.save_file(model.state_dict(), "
        f"'model.safetensors'), pushed with {weights_with} it)"
    )


def check_artifact_path(path: object) -> None:
    """TypeError saying what to pass for a `path` that is no file path: a torch module or its
    state_dict, as a notebook holds it, went on to fail in pathlib ("expected str, bytes or
    os.PathLike object, not Net")."""
    if isinstance(path, str | os.PathLike):
        return
    kind = type(path).__name__
    if hasattr(path, "state_dict") and hasattr(path, "parameters"):
        raise TypeError(f"push: path takes an artifact file, not a torch module ({kind}); {_TORCH_MODEL_FIX}")
    if isinstance(path, Mapping):
        raise TypeError(
            f"push: path takes an artifact file, not a mapping ({kind}: a state_dict?); save the weights with "
            "safetensors.torch.save_file(state_dict, 'model.safetensors') and push that file with "
            "architecture= naming what builds them"
        )
    raise TypeError(
        f"push: path takes an artifact file (str or Path): .onnx, or .safetensors with architecture=; got {kind}"
    )


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
        format = FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if format is None and (kind := torch_file_kind(path)) is not None:
        raise ValueError(torch_file_advice(path, kind, "architecture= naming what builds"))
    if format is None:
        raise ValueError(
            f"{path}: cannot tell the format from the suffix; pass format='onnx' or 'safetensors'"
        )
    formats = {
        number_word(pb.ArtifactFormat, number): number
        for number in pb.ArtifactFormat.values()
        if number != pb.ARTIFACT_FORMAT_UNSPECIFIED
    }
    if format.lower() not in formats:
        raise ValueError(f"{path}: format {format!r} is not one of {', '.join(sorted(formats))}")
    artifact_format = formats[format.lower()]
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
