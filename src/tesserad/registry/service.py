"""The model registry: models, immutable numbered versions, aliases with an audit log, lineage,
comparisons and deployments with rollback.

Guarantees:
- Every mutation is one LMDB write transaction: it fully happens or leaves the store as it
  was. A version is recorded only after its artifact blob is complete and verified in the
  blob directory; a blob nothing records any more is deleted after the commit.
- Version numbers count from 1 per model and are never reused, even after a delete.
- "latest" is reserved: it always resolves to the newest version and cannot be set.
- Listeners (`add_listener`) are called with the model name after every commit that can
  change where an alias, "latest" or the deployment points (serving reacts by hot swap).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from typing import Any

from tesserad.config import format_size
from tesserad.datasets.references import (
    delete_unheld_blobs,
    hold_blob,
    hold_dataset,
    release_blob,
    release_dataset,
)
from tesserad.dtypes import TENSOR_DTYPES
from tesserad.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from tesserad.names import RESERVED_ALIASES, validate_name
from tesserad.paging import make_token, page_size, resume_after
from tesserad.registry.artifacts import (
    check_onnx,
    safetensors_parameter_count,
    signature_differences,
    signature_mismatches,
)
from tesserad.registry.records import (
    ALIAS_EVENT_KIND,
    ALIAS_KIND,
    ARTIFACT_FORMATS,
    MODEL_KIND,
    SCHEMA,
    AliasEvent,
    AliasRecord,
    Comparison,
    DeploymentRecord,
    Lineage,
    MetricDiff,
    ModelRecord,
    Page,
    Route,
    Shadow,
    Signature,
    Target,
    ValueDiff,
    VersionKey,
    VersionRecord,
    decode_deployment,
    decode_version,
    encode_deployment,
    encode_version,
)
from tesserad.store import (
    BlobRef,
    BlobStore,
    Key,
    ReadTxn,
    Store,
    WriteTxn,
    decode_record,
    encode_record,
    pack,
    unpack,
)

log = logging.getLogger(__name__)

MODELS = "models"
VERSIONS = "model_versions"
ALIASES = "model_aliases"
ALIAS_EVENTS = "model_alias_events"
DEPLOYMENTS = "deployments"
DERIVED = "derived_versions"
TABLES = [MODELS, VERSIONS, ALIASES, ALIAS_EVENTS, DEPLOYMENTS, DERIVED]

LATEST = "latest"
ANONYMOUS = "anonymous"
_MAX_TENSOR_NAME = 256

# Checks a dataset version named in lineage inside the registering transaction:
# (txn, name, version, sha256) -> None, raising NotFound / InvalidArgument.
DatasetCheck = Callable[[ReadTxn, str, int, str], None]


def _holder(model: str, version: int) -> str:
    return f"model:{model}:{version}"


def _model_missing(name: str) -> NotFound:
    return NotFound(
        f"model {name!r} does not exist; create it with CreateModel (or upload with create_model)"
    )


def validate_signature(signature: Signature, *, required: bool) -> None:
    """Names present and unique, known dtypes, dims -1 (dynamic) or >= 1."""
    if required and (not signature.inputs or not signature.outputs):
        raise InvalidArgument(
            "signature needs at least one input and one output (name, dtype, shape with -1 for dynamic dims)"
        )
    for kind, specs in (("inputs", signature.inputs), ("outputs", signature.outputs)):
        seen: set[str] = set()
        for i, spec in enumerate(specs):
            where = f"signature.{kind}[{i}]"
            if not spec.name or len(spec.name) > _MAX_TENSOR_NAME:
                raise InvalidArgument(f"{where}.name is required (at most {_MAX_TENSOR_NAME} characters)")
            if spec.name in seen:
                raise InvalidArgument(f"{where}.name {spec.name!r} appears twice in signature.{kind}")
            seen.add(spec.name)
            if spec.dtype not in TENSOR_DTYPES:
                raise InvalidArgument(
                    f"{where} ({spec.name!r}).dtype is required; one of {', '.join(TENSOR_DTYPES)}"
                )
            bad = [d for d in spec.shape if d != -1 and d < 1]
            if bad:
                raise InvalidArgument(
                    f"{where} ({spec.name!r}).shape {list(spec.shape)}: dims must be -1 (dynamic) or >= 1"
                )


def _validate_tags(field: str, tags: dict[str, str]) -> None:
    for key in tags:
        if not key or len(key) > 128:
            raise InvalidArgument(f"{field} keys must be 1 to 128 characters, got {key[:140]!r}")


def _validate_metrics(metrics: dict[str, float]) -> None:
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise InvalidArgument(f"metrics[{key!r}] is {value}; metrics must be finite numbers")


class Registry:
    """Models, versions, aliases, lineage and deployments over a Store and a BlobStore."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        *,
        max_artifact_size: int,
        dataset_check: DatasetCheck | None = None,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self.max_artifact_size = max_artifact_size
        self._dataset_check = dataset_check
        self._listeners: list[Callable[[str], None]] = []

    # -- listeners -------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """Call `callback(model_name)` after each commit that may move an alias, latest or the deployment.

        Runs in the committing thread; keep it short (hand work to your own loop or queue).
        """
        self._listeners.append(callback)

    def _notify(self, model: str) -> None:
        for callback in self._listeners:
            try:
                callback(model)
            except Exception:
                log.exception("registry listener failed", extra={"model": model})

    # -- models ----------------------------------------------------------------------------

    def _model_data(self, txn: ReadTxn, name: str) -> dict[str, Any]:
        raw = txn.get(MODELS, (name,))
        if raw is None:
            raise _model_missing(name)
        return decode_record(raw, MODEL_KIND, SCHEMA)[1]

    def _latest(self, txn: ReadTxn, model: str) -> int:
        for key, _ in txn.scan(VERSIONS, (model,), reverse=True, limit=1):
            return int(key[1])
        return 0

    def _model_record(self, txn: ReadTxn, data: dict[str, Any]) -> ModelRecord:
        name = data["name"]
        latest = self._latest(txn, name)
        aliases = {
            str(key[1]): decode_record(raw, ALIAS_KIND, SCHEMA)[1]["version"]
            for key, raw in txn.scan(ALIASES, (name,))
        }
        if latest:
            aliases[LATEST] = latest
        return ModelRecord(
            name=name,
            description=data["description"],
            tags=dict(data["tags"]),
            created_at=data["created_at"],
            updated_at=data["updated_at"],
            latest_version=latest,
            version_count=txn.count(VERSIONS, (name,)),
            aliases=aliases,
        )

    @staticmethod
    def _new_model_data(name: str, description: str, tags: dict[str, str]) -> dict[str, Any]:
        now = time.time()
        return {
            "name": name,
            "description": description,
            "tags": dict(tags),
            "created_at": now,
            "updated_at": now,
            "next_version": 1,
            "next_event": 1,
        }

    def create_model(
        self, name: str, description: str = "", tags: dict[str, str] | None = None
    ) -> ModelRecord:
        validate_name("name", name)
        _validate_tags("tags", tags or {})
        with self._store.write() as txn:
            if txn.exists(MODELS, (name,)):
                raise AlreadyExists(f"model {name!r} already exists; pick another name or use UpdateModel")
            data = self._new_model_data(name, description, tags or {})
            txn.put(MODELS, (name,), encode_record(MODEL_KIND, SCHEMA, data))
            return self._model_record(txn, data)

    def get_model(self, name: str) -> ModelRecord:
        validate_name("name", name)
        with self._store.read() as txn:
            return self._model_record(txn, self._model_data(txn, name))

    def list_models(
        self,
        name_prefix: str = "",
        tags: dict[str, str] | None = None,
        page_size_: int = 0,
        page_token: str = "",
    ) -> Page:
        """Models in name order whose name starts with `name_prefix` and that carry every tag
        in `tags` (an empty value matches any value)."""
        tags = tags or {}
        limit = page_size(page_size_)
        query = {"list": "models", "prefix": name_prefix, "tags": tags}
        after = resume_after(page_token, query)
        page = Page()
        with self._store.read() as txn:
            start: Key | None = (name_prefix,) if name_prefix else None
            last: Key | None = None
            for key, raw in txn.scan(
                MODELS, start=start if after is None else None, after=unpack(after) if after else None
            ):
                name = str(key[0])
                if not name.startswith(name_prefix):
                    break
                data = decode_record(raw, MODEL_KIND, SCHEMA)[1]
                if any(k not in data["tags"] or (v and data["tags"][k] != v) for k, v in tags.items()):
                    continue
                if len(page.items) == limit:
                    page.next_page_token = make_token(pack(last), query) if last else ""
                    break
                page.items.append(self._model_record(txn, data))
                last = key
        return page

    def update_model(
        self,
        name: str,
        description: str | None = None,
        set_tags: dict[str, str] | None = None,
        remove_tags: list[str] | tuple[str, ...] = (),
    ) -> ModelRecord:
        validate_name("name", name)
        _validate_tags("set_tags", set_tags or {})
        with self._store.write() as txn:
            data = self._model_data(txn, name)
            if description is not None:
                data["description"] = description
            data["tags"].update(set_tags or {})
            for key in remove_tags:
                data["tags"].pop(key, None)
            data["updated_at"] = time.time()
            txn.put(MODELS, (name,), encode_record(MODEL_KIND, SCHEMA, data))
            return self._model_record(txn, data)

    def delete_model(self, name: str, force: bool = False) -> int:
        """Delete a model and its versions; refused while aliases or a deployment point into it."""
        validate_name("name", name)
        with self._store.write() as txn:
            self._model_data(txn, name)
            aliases = [str(key[1]) for key, _ in txn.scan(ALIASES, (name,))]
            deployed = any(True for _ in txn.scan(DEPLOYMENTS, (name,), limit=1))
            if not force and (aliases or deployed):
                uses = [f"aliases {', '.join(aliases)}"] if aliases else []
                uses += ["a deployment"] if deployed else []
                raise FailedPrecondition(
                    f"model {name!r} is in use by {' and '.join(uses)}; delete those first or pass force"
                )
            freed: set[str] = set()
            deleted = 0
            for _key, raw in list(txn.scan(VERSIONS, (name,))):
                freed.add(self._delete_version_rows(txn, decode_version(raw)))
                deleted += 1
            for table in (ALIASES, ALIAS_EVENTS, DEPLOYMENTS, DERIVED):
                txn.delete_range(table, (name,))
            txn.delete(MODELS, (name,))
        delete_unheld_blobs(self._store, self._blobs, freed)
        self._notify(name)
        return deleted

    # -- versions --------------------------------------------------------------------------

    def _version(self, txn: ReadTxn, model: str, version: int) -> VersionRecord:
        raw = txn.get(VERSIONS, (model, version))
        if raw is None:
            self._model_data(txn, model)
            raise NotFound(f"model {model!r} has no version {version}")
        return self._with_aliases(txn, decode_version(raw))

    def _with_aliases(self, txn: ReadTxn, record: VersionRecord) -> VersionRecord:
        names = [
            str(key[1])
            for key, raw in txn.scan(ALIASES, (record.model,))
            if decode_record(raw, ALIAS_KIND, SCHEMA)[1]["version"] == record.version
        ]
        if self._latest(txn, record.model) == record.version:
            names.append(LATEST)
        return replace(record, aliases=tuple(names))

    def _resolve_number(self, txn: ReadTxn, model: str, version: int | None, alias: str | None) -> int:
        data = self._model_data(txn, model)
        if version:
            if version < 0:
                raise InvalidArgument(f"version must be >= 1, got {version}")
            return version
        alias = alias or LATEST
        if alias == LATEST:
            latest = self._latest(txn, model)
            if not latest:
                raise NotFound(f"model {data['name']!r} has no versions yet; upload one with UploadVersion")
            return latest
        validate_name("alias", alias)
        raw = txn.get(ALIASES, (model, alias))
        if raw is None:
            raise NotFound(f"model {model!r} has no alias {alias!r}; set it with SetAlias")
        return int(decode_record(raw, ALIAS_KIND, SCHEMA)[1]["version"])

    def resolve(self, model: str, version: int | None = None, alias: str | None = None) -> VersionRecord:
        """The version named by number, or by alias ("latest", the default, is the newest)."""
        validate_name("model", model)
        with self._store.read() as txn:
            return self._version(txn, model, self._resolve_number(txn, model, version, alias))

    def get_version(self, model: str, version: int) -> VersionRecord:
        return self.resolve(model, version=version)

    def list_versions(self, model: str, page_size_: int = 0, page_token: str = "") -> Page:
        """Newest first."""
        validate_name("model", model)
        limit = page_size(page_size_)
        query = {"list": "versions", "model": model}
        after = resume_after(page_token, query)
        page = Page()
        with self._store.read() as txn:
            self._model_data(txn, model)
            rows = list(
                txn.scan(
                    VERSIONS, (model,), reverse=True, after=unpack(after) if after else None, limit=limit + 1
                )
            )
            for _key, raw in rows[:limit]:
                page.items.append(self._with_aliases(txn, decode_version(raw)))
            if len(rows) > limit:
                page.next_page_token = make_token(pack(rows[limit - 1][0]), query)
        return page

    def check_upload(
        self,
        model: str,
        *,
        format: str,
        signature: Signature,
        architecture: dict[str, Any] | None,
        size_bytes: int,
        create_model_if_missing: bool,
    ) -> None:
        """What can be checked from an upload's header, before any byte is stored."""
        validate_name("model", model)
        if format not in ARTIFACT_FORMATS:
            raise InvalidArgument(f"format must be safetensors or onnx, got {format or 'unspecified'}")
        validate_signature(signature, required=format == "safetensors")
        if format == "safetensors" and not architecture:
            raise InvalidArgument(
                "architecture is required for a safetensors upload (it says how to build the model)"
            )
        if size_bytes <= 0:
            raise InvalidArgument(f"size_bytes must be the artifact's size in bytes (> 0), got {size_bytes}")
        if size_bytes > self.max_artifact_size:
            raise ResourceExhausted(
                f"the artifact is {format_size(size_bytes)} ({size_bytes} bytes), over "
                f"limits.max_artifact_size ({format_size(self.max_artifact_size)}); raise the limit "
                "(TESSERA_LIMITS_MAX_ARTIFACT_SIZE) or upload a smaller artifact"
            )
        if not create_model_if_missing:
            with self._store.read() as txn:
                self._model_data(txn, model)

    def register_version(
        self,
        model: str,
        *,
        format: str,
        blob: BlobRef,
        signature: Signature | None = None,
        architecture: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        lineage: Lineage | None = None,
        description: str = "",
        create_model_if_missing: bool = False,
        alias: str = "",
        actor: str = ANONYMOUS,
    ) -> VersionRecord:
        """Record a stored blob as the model's next version (all or nothing).

        The artifact is checked first (safetensors header; onnx.checker and, when a signature
        is given, that it matches the graph; an onnx version without one takes the graph's).
        On any failure the blob is deleted unless something else holds it.
        """
        try:
            return self._register(
                model,
                format=format,
                blob=blob,
                signature=signature or Signature(),
                architecture=architecture,
                params=params or {},
                metrics=metrics or {},
                tags=tags or {},
                lineage=lineage or Lineage(),
                description=description,
                create_model_if_missing=create_model_if_missing,
                alias=alias,
                actor=actor,
            )
        except BaseException:
            delete_unheld_blobs(self._store, self._blobs, {blob.sha256})
            raise

    def _register(
        self,
        model: str,
        *,
        format: str,
        blob: BlobRef,
        signature: Signature,
        architecture: dict[str, Any] | None,
        params: dict[str, str],
        metrics: dict[str, float],
        tags: dict[str, str],
        lineage: Lineage,
        description: str,
        create_model_if_missing: bool,
        alias: str,
        actor: str,
    ) -> VersionRecord:
        self.check_upload(
            model,
            format=format,
            signature=signature,
            architecture=architecture,
            size_bytes=blob.size,
            create_model_if_missing=create_model_if_missing,
        )
        _validate_tags("tags", tags)
        _validate_metrics(metrics)
        if alias:
            self._check_settable_alias(alias)
        # The blob was hashed as it was written (BlobWriter.commit); hashing it again here would
        # halve upload throughput (measured with bench/transfer_bench.py).
        path = self._blobs.path(blob.sha256)
        if not path.is_file():
            raise DataLoss(f"blob {blob.sha256} is missing from the blob directory; upload it again")
        if format == "onnx":
            graph_signature, parameter_count = check_onnx(path)
            if signature.inputs or signature.outputs:
                problems = signature_mismatches(signature, graph_signature)
                if problems:
                    raise InvalidArgument(
                        "the declared signature does not match the ONNX graph: " + "; ".join(problems)
                    )
            else:
                signature = graph_signature
                validate_signature(signature, required=True)
        else:
            parameter_count = safetensors_parameter_count(path)
        with self._store.write() as txn:
            raw = txn.get(MODELS, (model,))
            if raw is None:
                if not create_model_if_missing:
                    raise _model_missing(model)
                data = self._new_model_data(model, "", {})
            else:
                data = decode_record(raw, MODEL_KIND, SCHEMA)[1]
            number = int(data["next_version"])
            self._check_lineage(txn, model, number, lineage)
            record = VersionRecord(
                model=model,
                version=number,
                format=format,
                description=description,
                signature=signature,
                architecture=architecture,
                params=dict(params),
                metrics=dict(metrics),
                tags=dict(tags),
                lineage=lineage,
                sha256=blob.sha256,
                size_bytes=blob.size,
                created_at=time.time(),
                created_by=actor,
                parameter_count=parameter_count,
            )
            data["next_version"] = number + 1
            data["updated_at"] = record.created_at
            txn.put(VERSIONS, (model, number), encode_version(record))
            hold_blob(txn, blob.sha256, _holder(model, number))
            for ds in lineage.datasets:
                hold_dataset(txn, ds.name, ds.version, _holder(model, number))
            if lineage.parent_version:
                txn.put(DERIVED, (lineage.parent_model or model, lineage.parent_version, model, number), b"")
            if alias:
                self._move_alias(txn, data, alias, number, actor, expected=None)
            txn.put(MODELS, (model,), encode_record(MODEL_KIND, SCHEMA, data))
            result = self._with_aliases(txn, record)
        self._notify(model)
        return result

    def _check_lineage(self, txn: ReadTxn, model: str, number: int, lineage: Lineage) -> None:
        if lineage.parent_model:
            validate_name("lineage.parent_model", lineage.parent_model)
        if lineage.parent_version:
            parent_model = lineage.parent_model or model
            if not txn.exists(VERSIONS, (parent_model, lineage.parent_version)):
                raise NotFound(
                    f"lineage.parent_version: model {parent_model!r} has no version {lineage.parent_version}"
                )
        elif lineage.parent_model:
            raise InvalidArgument("lineage.parent_model is set without lineage.parent_version")
        for i, ds in enumerate(lineage.datasets):
            validate_name(f"lineage.datasets[{i}].name", ds.name)
            if ds.version < 1:
                raise InvalidArgument(f"lineage.datasets[{i}].version must be >= 1, got {ds.version}")
            if self._dataset_check is not None:
                self._dataset_check(txn, ds.name, ds.version, ds.sha256)

    def open_artifact(self, record: VersionRecord, chunk_size: int) -> Iterator[bytes]:
        """The artifact's bytes in chunks, verified against its sha256 (DataLoss if damaged)."""
        return self._blobs.read_chunks(record.sha256, chunk_size)

    def artifact_path(self, record: VersionRecord) -> Any:
        """The artifact's file after checking its hash: a context manager yielding a Path."""
        return self._blobs.open_verified(record.sha256)

    def _delete_version_rows(self, txn: WriteTxn, record: VersionRecord) -> str:
        holder = _holder(record.model, record.version)
        txn.delete(VERSIONS, (record.model, record.version))
        release_blob(txn, record.sha256, holder)
        for ds in record.lineage.datasets:
            release_dataset(txn, ds.name, ds.version, holder)
        if record.lineage.parent_version:
            parent = record.lineage.parent_model or record.model
            txn.delete(DERIVED, (parent, record.lineage.parent_version, record.model, record.version))
        return record.sha256

    def delete_version(self, model: str, version: int) -> None:
        """Refused while an alias or the current deployment uses the version."""
        validate_name("model", model)
        with self._store.write() as txn:
            record = self._version(txn, model, version)
            users = [a for a in record.aliases if a != LATEST]
            deployment = self._current_deployment(txn, model)
            if deployment is not None and version in self._deployment_versions(txn, deployment):
                users.append(f"deployment revision {deployment.revision}")
            if users:
                raise FailedPrecondition(
                    f"version {version} of model {model!r} is in use by {', '.join(users)}; "
                    "move those to another version first"
                )
            sha256 = self._delete_version_rows(txn, record)
        delete_unheld_blobs(self._store, self._blobs, {sha256})
        self._notify(model)

    # -- aliases ---------------------------------------------------------------------------

    @staticmethod
    def _check_settable_alias(alias: str) -> None:
        validate_name("alias", alias)
        if alias in RESERVED_ALIASES:
            raise InvalidArgument(f"alias {alias!r} is reserved: it always names the newest version")

    def _move_alias(
        self,
        txn: WriteTxn,
        model_data: dict[str, Any],
        alias: str,
        version: int,
        actor: str,
        expected: int | None,
    ) -> AliasRecord:
        model = model_data["name"]
        raw = txn.get(ALIASES, (model, alias))
        current = int(decode_record(raw, ALIAS_KIND, SCHEMA)[1]["version"]) if raw else 0
        if expected is not None and expected != current:
            where = f"points at version {current}" if current else "does not exist"
            raise FailedPrecondition(
                f"alias {alias!r} of model {model!r} {where}, not {expected if expected else 'absent'} as expected; "
                "read it again and retry"
            )
        now = time.time()
        record = AliasRecord(model, alias, version, now, actor)
        txn.put(
            ALIASES,
            (model, alias),
            encode_record(ALIAS_KIND, SCHEMA, {"version": version, "updated_at": now, "updated_by": actor}),
        )
        if current != version:
            self._log_alias_event(txn, model_data, AliasEvent(model, alias, current, version, now, actor))
        return record

    def _log_alias_event(self, txn: WriteTxn, model_data: dict[str, Any], event: AliasEvent) -> None:
        seq = int(model_data["next_event"])
        model_data["next_event"] = seq + 1
        txn.put(ALIAS_EVENTS, (event.model, seq), encode_record(ALIAS_EVENT_KIND, SCHEMA, asdict(event)))

    def set_alias(
        self,
        model: str,
        alias: str,
        version: int,
        actor: str = ANONYMOUS,
        expected_version: int | None = None,
    ) -> AliasRecord:
        """Create or move an alias (compare-and-set when expected_version is given; 0 = must not exist)."""
        validate_name("model", model)
        self._check_settable_alias(alias)
        with self._store.write() as txn:
            data = self._model_data(txn, model)
            if not txn.exists(VERSIONS, (model, version)):
                raise NotFound(f"model {model!r} has no version {version}")
            record = self._move_alias(txn, data, alias, version, actor, expected_version)
            txn.put(MODELS, (model,), encode_record(MODEL_KIND, SCHEMA, data))
        self._notify(model)
        return record

    def get_alias(self, model: str, alias: str) -> AliasRecord:
        validate_name("model", model)
        validate_name("alias", alias)
        with self._store.read() as txn:
            data = self._model_data(txn, model)
            if alias == LATEST:
                number = self._resolve_number(txn, model, None, LATEST)
                created = decode_version(txn.get(VERSIONS, (model, number)) or b"")
                return AliasRecord(model, LATEST, number, created.created_at, created.created_by)
            raw = txn.get(ALIASES, (model, alias))
            if raw is None:
                raise NotFound(f"model {data['name']!r} has no alias {alias!r}; set it with SetAlias")
            stored = decode_record(raw, ALIAS_KIND, SCHEMA)[1]
            return AliasRecord(model, alias, stored["version"], stored["updated_at"], stored["updated_by"])

    def list_aliases(self, model: str) -> list[AliasRecord]:
        """Every alias of the model, "latest" included when there is a version."""
        validate_name("model", model)
        with self._store.read() as txn:
            self._model_data(txn, model)
            out = []
            for key, raw in txn.scan(ALIASES, (model,)):
                stored = decode_record(raw, ALIAS_KIND, SCHEMA)[1]
                out.append(
                    AliasRecord(
                        model, str(key[1]), stored["version"], stored["updated_at"], stored["updated_by"]
                    )
                )
            latest = self._latest(txn, model)
            if latest:
                newest = decode_version(txn.get(VERSIONS, (model, latest)) or b"")
                out.append(AliasRecord(model, LATEST, latest, newest.created_at, newest.created_by))
        return out

    def delete_alias(self, model: str, alias: str, actor: str = ANONYMOUS) -> None:
        """Refused while the current deployment routes through the alias."""
        validate_name("model", model)
        self._check_settable_alias(alias)
        with self._store.write() as txn:
            data = self._model_data(txn, model)
            raw = txn.get(ALIASES, (model, alias))
            if raw is None:
                raise NotFound(f"model {model!r} has no alias {alias!r}")
            deployment = self._current_deployment(txn, model)
            if deployment is not None and alias in self._deployment_aliases(deployment):
                raise FailedPrecondition(
                    f"alias {alias!r} is used by deployment revision {deployment.revision} of model {model!r}; "
                    "deploy without it first"
                )
            current = int(decode_record(raw, ALIAS_KIND, SCHEMA)[1]["version"])
            txn.delete(ALIASES, (model, alias))
            self._log_alias_event(txn, data, AliasEvent(model, alias, current, 0, time.time(), actor))
            txn.put(MODELS, (model,), encode_record(MODEL_KIND, SCHEMA, data))
        self._notify(model)

    def list_alias_history(
        self, model: str, alias: str = "", page_size_: int = 0, page_token: str = ""
    ) -> Page:
        """Alias events, newest first; only `alias`'s when given."""
        validate_name("model", model)
        if alias:
            validate_name("alias", alias)
        limit = page_size(page_size_)
        query = {"list": "alias_history", "model": model, "alias": alias}
        after = resume_after(page_token, query)
        page = Page()
        with self._store.read() as txn:
            self._model_data(txn, model)
            last: Key | None = None
            for key, raw in txn.scan(
                ALIAS_EVENTS, (model,), reverse=True, after=unpack(after) if after else None
            ):
                event = AliasEvent(**decode_record(raw, ALIAS_EVENT_KIND, SCHEMA)[1])
                if alias and event.alias != alias:
                    continue
                if len(page.items) == limit:
                    page.next_page_token = make_token(pack(last), query) if last else ""
                    break
                page.items.append(event)
                last = key
        return page

    # -- lineage and comparison ------------------------------------------------------------

    def get_lineage(
        self, model: str, version: int | None = None, alias: str | None = None
    ) -> tuple[VersionRecord, list[VersionKey]]:
        """The version (its lineage included) and the versions whose parent it is."""
        validate_name("model", model)
        with self._store.read() as txn:
            record = self._version(txn, model, self._resolve_number(txn, model, version, alias))
            derived = [
                VersionKey(str(k[2]), int(k[3])) for k, _ in txn.scan(DERIVED, (model, record.version))
            ]
        return record, derived

    def compare(
        self, a: tuple[str, int | None, str | None], b: tuple[str, int | None, str | None]
    ) -> Comparison:
        """Differences between two versions (any models): params, metrics, signature, size, lineage."""
        ra = self.resolve(*a)
        rb = self.resolve(*b)
        params = [
            ValueDiff(k, ra.params.get(k, ""), rb.params.get(k, ""), k in ra.params, k in rb.params)
            for k in sorted(set(ra.params) | set(rb.params))
            if ra.params.get(k) != rb.params.get(k)
        ]
        metrics = []
        for k in sorted(set(ra.metrics) | set(rb.metrics)):
            va, vb = ra.metrics.get(k), rb.metrics.get(k)
            if va != vb:
                both = va is not None and vb is not None
                metrics.append(
                    MetricDiff(
                        k, va or 0.0, vb or 0.0, va is not None, vb is not None, (vb - va) if both else 0.0
                    )  # type: ignore[operator]
                )
        la, lb = _flat_lineage(ra), _flat_lineage(rb)
        lineage = [
            ValueDiff(k, la.get(k, ""), lb.get(k, ""), k in la, k in lb)
            for k in sorted(set(la) | set(lb))
            if la.get(k) != lb.get(k)
        ]
        differences = signature_differences(ra.signature, rb.signature)
        return Comparison(
            ra, rb, params, metrics, not differences, differences, rb.size_bytes - ra.size_bytes, lineage
        )

    # -- deployments -----------------------------------------------------------------------

    def _current_deployment(self, txn: ReadTxn, model: str) -> DeploymentRecord | None:
        for _, raw in txn.scan(DEPLOYMENTS, (model,), reverse=True, limit=1):
            return decode_deployment(raw)
        return None

    @staticmethod
    def _deployment_aliases(deployment: DeploymentRecord) -> set[str]:
        targets = [r.target for r in deployment.routes] + (
            [deployment.shadow.target] if deployment.shadow else []
        )
        return {t.alias for t in targets if t.alias}

    def _deployment_versions(self, txn: ReadTxn, deployment: DeploymentRecord) -> set[int]:
        resolved = self._resolved(txn, deployment)
        versions = {r.resolved_version for r in resolved.routes}
        if resolved.shadow:
            versions.add(resolved.shadow.resolved_version)
        return versions

    def _resolve_target(self, txn: ReadTxn, model: str, target: Target, where: str) -> int:
        if bool(target.version) == bool(target.alias):
            raise InvalidArgument(f"{where} needs exactly one of version or alias")
        if target.version:
            if not txn.exists(VERSIONS, (model, target.version)):
                raise NotFound(f"{where}: model {model!r} has no version {target.version}")
            return target.version
        validate_name(f"{where}.alias", target.alias)
        try:
            return self._resolve_number(txn, model, None, target.alias)
        except NotFound as exc:
            raise NotFound(f"{where}: {exc.message}") from None

    def _resolved(self, txn: ReadTxn, deployment: DeploymentRecord) -> DeploymentRecord:
        def number(target: Target) -> int:
            try:
                return self._resolve_number(
                    txn, deployment.model, target.version or None, target.alias or None
                )
            except NotFound:
                return 0

        routes = tuple(replace(r, resolved_version=number(r.target)) for r in deployment.routes)
        shadow = (
            replace(deployment.shadow, resolved_version=number(deployment.shadow.target))
            if deployment.shadow
            else None
        )
        return replace(deployment, routes=routes, shadow=shadow)

    def deploy(
        self,
        model: str,
        routes: list[Route],
        shadow: Shadow | None = None,
        comment: str = "",
        actor: str = ANONYMOUS,
    ) -> DeploymentRecord:
        """A new deployment revision: weights 1..100 summing to 100, every target resolvable."""
        validate_name("model", model)
        if not routes:
            raise InvalidArgument("routes must name at least one version or alias with a weight")
        for i, route in enumerate(routes):
            if not 1 <= route.weight <= 100:
                raise InvalidArgument(f"routes[{i}].weight must be 1..100, got {route.weight}")
        total = sum(r.weight for r in routes)
        if total != 100:
            raise InvalidArgument(f"route weights must sum to 100, got {total}")
        if shadow is not None and not 1 <= shadow.percent <= 100:
            raise InvalidArgument(f"shadow.percent must be 1..100, got {shadow.percent}")
        with self._store.write() as txn:
            self._model_data(txn, model)
            for i, route in enumerate(routes):
                self._resolve_target(txn, model, route.target, f"routes[{i}]")
            if shadow is not None:
                self._resolve_target(txn, model, shadow.target, "shadow")
            current = self._current_deployment(txn, model)
            record = DeploymentRecord(
                model=model,
                revision=(current.revision if current else 0) + 1,
                routes=tuple(Route(r.target, r.weight) for r in routes),
                shadow=Shadow(shadow.target, shadow.percent) if shadow else None,
                created_at=time.time(),
                created_by=actor,
                comment=comment,
                previous_revision=current.revision if current else 0,
            )
            txn.put(DEPLOYMENTS, (model, record.revision), encode_deployment(record))
            result = self._resolved(txn, record)
        self._notify(model)
        return result

    def get_deployment(self, model: str) -> DeploymentRecord:
        """The current deployment with each target's resolved version; NotFound when none."""
        validate_name("model", model)
        with self._store.read() as txn:
            self._model_data(txn, model)
            current = self._current_deployment(txn, model)
            if current is None:
                raise NotFound(f"model {model!r} has no deployment; create one with Deploy")
            return self._resolved(txn, current)

    def list_deployments(self, model: str, page_size_: int = 0, page_token: str = "") -> Page:
        """Deployment history, newest first."""
        validate_name("model", model)
        limit = page_size(page_size_)
        query = {"list": "deployments", "model": model}
        after = resume_after(page_token, query)
        page = Page()
        with self._store.read() as txn:
            self._model_data(txn, model)
            rows = list(
                txn.scan(
                    DEPLOYMENTS,
                    (model,),
                    reverse=True,
                    after=unpack(after) if after else None,
                    limit=limit + 1,
                )
            )
            page.items = [self._resolved(txn, decode_deployment(raw)) for _, raw in rows[:limit]]
            if len(rows) > limit:
                page.next_page_token = make_token(pack(rows[limit - 1][0]), query)
        return page

    def rollback(self, model: str, actor: str = ANONYMOUS) -> DeploymentRecord:
        """Restore the deployment before the current one as a new revision.

        Rolling back again goes one further back (the new revision's predecessor is the
        restored one's predecessor), so repeated rollbacks walk the history.
        """
        validate_name("model", model)
        with self._store.write() as txn:
            self._model_data(txn, model)
            current = self._current_deployment(txn, model)
            if current is None or not current.previous_revision:
                raise FailedPrecondition(
                    f"model {model!r} has no earlier deployment to roll back to"
                    + (
                        f" (revision {current.revision} is the first)"
                        if current
                        else "; it was never deployed"
                    )
                )
            raw = txn.get(DEPLOYMENTS, (model, current.previous_revision))
            if raw is None:
                raise FailedPrecondition(
                    f"deployment revision {current.previous_revision} of {model!r} is gone"
                )
            restored = decode_deployment(raw)
            for i, route in enumerate(restored.routes):
                self._resolve_target(txn, model, route.target, f"revision {restored.revision} routes[{i}]")
            if restored.shadow is not None:
                self._resolve_target(
                    txn, model, restored.shadow.target, f"revision {restored.revision} shadow"
                )
            record = replace(
                restored,
                revision=current.revision + 1,
                created_at=time.time(),
                created_by=actor,
                comment=f"rollback of revision {current.revision} to revision {restored.revision}",
                rolled_back_from=current.revision,
                previous_revision=restored.previous_revision,
            )
            txn.put(DEPLOYMENTS, (model, record.revision), encode_deployment(record))
            result = self._resolved(txn, record)
        self._notify(model)
        return result


def _flat_lineage(record: VersionRecord) -> dict[str, str]:
    lineage = record.lineage
    flat = {
        "run_id": lineage.run_id,
        "job_id": lineage.job_id,
        "experiment": lineage.experiment,
        "parent": f"{lineage.parent_model or record.model}:{lineage.parent_version}"
        if lineage.parent_version
        else "",
        "job_spec": json.dumps(lineage.job_spec, sort_keys=True, separators=(",", ":"))
        if lineage.job_spec
        else "",
    }
    for ds in lineage.datasets:
        flat[f"dataset.{ds.name}"] = f"v{ds.version} sha256:{ds.sha256}" if ds.sha256 else f"v{ds.version}"
    return {k: v for k, v in flat.items() if v}
