"""Models: the named containers of versions, with a description and tags."""

from __future__ import annotations

import time
from typing import Any

from tesserad.datasets.references import delete_unheld_blobs
from tesserad.errors import AlreadyExists, FailedPrecondition, NotFound
from tesserad.names import missing_name, validate_name, validate_name_prefix, validate_stored_name
from tesserad.paging import Page, read_page
from tesserad.registry.deployments import current_deployment, next_revision
from tesserad.registry.ensembles import check_no_other_ensemble_uses_model
from tesserad.registry.records import ALIAS_KIND, MODEL_KIND, SCHEMA, ModelRecord, decode_version
from tesserad.registry.serving_configs import stored_serving_configs
from tesserad.registry.tables import (
    ALIAS_EVENTS,
    ALIASES,
    DEPLOYMENTS,
    DERIVED,
    LATEST,
    MODELS,
    VERSIONS,
    Notify,
    model_data,
    new_model_data,
    put_model_data,
    retire_version_numbers,
)
from tesserad.registry.validation import validate_model_text, validate_tags
from tesserad.registry.versions import check_not_fine_tuned_from, delete_version_rows
from tesserad.store import BlobStore, ReadTxn, Store, decode_record
from tesserad.text import check_tag_update


def model_record(txn: ReadTxn, fields: dict[str, Any]) -> ModelRecord:
    """The stored fields with what is derived from the model's versions and aliases."""
    name = fields["name"]
    latest = int(fields["latest_version"])
    aliases = {
        str(key[1]): decode_record(raw, ALIAS_KIND, SCHEMA)[1]["version"]
        for key, raw in txn.scan(ALIASES, (name,))
    }
    if latest:
        aliases[LATEST] = latest
    return ModelRecord(
        name=name,
        description=fields["description"],
        tags=dict(fields["tags"]),
        created_at=fields["created_at"],
        updated_at=fields["updated_at"],
        latest_version=latest,
        version_count=int(fields["version_count"]),
        aliases=aliases,
        next_version=int(fields["next_version"]),
        # A record from before models kept it numbered from 1.
        first_version=int(fields.get("first_version", 1)),
        numbers_skipped=int(fields.get("numbers_skipped", 0)),
        # Counted from where its events started: on from the model of its name deleted before.
        alias_events=int(fields["next_event"]) - int(fields.get("first_event", 1)),
        serving_configs=stored_serving_configs(fields),
    )


class Models:
    """Create, read, list, update and delete models."""

    def __init__(self, store: Store, blobs: BlobStore, notify: Notify) -> None:
        self._store = store
        self._blobs = blobs
        self._notify = notify

    def create_model(
        self, name: str, description: str = "", tags: dict[str, str] | None = None
    ) -> ModelRecord:
        validate_name("name", name)
        validate_tags("tags", tags or {})
        validate_model_text(description, tags or {})
        with self._store.write() as txn:
            if txn.exists(MODELS, (name,)):
                raise AlreadyExists(f"model {name!r} already exists; pick another name or use UpdateModel")
            fields = new_model_data(txn, name, description, tags or {})
            put_model_data(txn, fields)
            record = model_record(txn, fields)
        # A model with no version yet still exists for routing ("has no versions yet", not "does
        # not exist"): the change feed must carry it to replicas.
        self._notify(name)
        return record

    def get_model(self, name: str) -> ModelRecord:
        validate_name("name", name)
        with self._store.read() as txn:
            return model_record(txn, model_data(txn, name))

    def list_models(
        self,
        name_prefix: str = "",
        tags: dict[str, str] | None = None,
        page_size_: int = 0,
        page_token: str = "",
    ) -> Page[ModelRecord]:
        """Models in name order whose name starts with `name_prefix` and that carry every tag
        in `tags` (an empty value matches any value)."""
        tags = tags or {}
        validate_name_prefix("name_prefix", name_prefix)
        # A key no tag can have would match nothing, silently.
        validate_tags("tags", tags)

        def tagged(_key: Any, raw: bytes) -> bool:
            have = decode_record(raw, MODEL_KIND, SCHEMA)[1]["tags"]
            return all(k in have and (not v or have[k] == v) for k, v in tags.items())

        with self._store.read() as txn:
            return read_page(
                txn,
                MODELS,
                query={"list": "models", "prefix": name_prefix, "tags": tags},
                page_token=page_token,
                requested_size=page_size_,
                item=lambda _key, raw: model_record(txn, decode_record(raw, MODEL_KIND, SCHEMA)[1]),
                keep=tagged if tags else None,
                until=lambda key: not str(key[0]).startswith(name_prefix),
                start=(name_prefix,) if name_prefix else None,
            )

    def missing_model(self, name: str, fix: str) -> NotFound | None:
        """NotFound for a model that does not exist, saying `fix` (how to make what the caller
        needs) after a stored name close to it; None when it exists."""
        with self._store.read() as txn:
            return None if txn.exists(MODELS, (name,)) else missing_name(txn, MODELS, "model", name, fix)

    def model_names(self) -> list[str]:
        """Every model's name, in name order, from one read."""
        with self._store.read() as txn:
            return [str(key[0]) for key, _ in txn.scan(MODELS)]

    def update_model(
        self,
        name: str,
        description: str | None = None,
        set_tags: dict[str, str] | None = None,
        remove_tags: list[str] | tuple[str, ...] = (),
    ) -> ModelRecord:
        validate_name("name", name)
        validate_tags("set_tags", set_tags or {})
        check_tag_update(set_tags or {}, remove_tags)
        with self._store.write() as txn:
            fields = model_data(txn, name)
            if description is not None:
                fields["description"] = description
            fields["tags"].update(set_tags or {})
            for key in remove_tags:
                fields["tags"].pop(key, None)
            validate_model_text(fields["description"], fields["tags"])
            fields["updated_at"] = time.time()
            put_model_data(txn, fields)
            return model_record(txn, fields)

    def delete_model(self, name: str, force: bool = False) -> int:
        """Delete a model and its versions; refused while aliases or a deployment point into it
        (unless `force`), and always while an unfinished fine-tuning job starts from one of them
        or an ensemble version of another model uses one as a member."""
        validate_stored_name("name", name)
        with self._store.write() as txn:
            fields = model_data(txn, name)
            aliases = [str(key[1]) for key, _ in txn.scan(ALIASES, (name,))]
            deployed = current_deployment(txn, name) is not None
            if not force and (aliases or deployed):
                named = ", ".join(repr(a) for a in aliases)
                uses = [f"{'aliases' if len(aliases) > 1 else 'alias'} {named}"] if aliases else []
                uses += ["a deployment"] if deployed else []
                them = "them" if len(aliases) + deployed > 1 else "it"
                # A deployment has no delete of its own (Rollbacks past its first revision end it).
                first = "" if deployed else f"delete {them} first (DeleteAlias) or "
                raise FailedPrecondition(
                    f"model {name!r} is in use by {' and '.join(uses)}; {first}pass force to delete "
                    f"{them} with the model"
                )
            check_no_other_ensemble_uses_model(txn, name)
            freed: set[str] = set()
            deleted = 0
            for _key, raw in list(txn.scan(VERSIONS, (name,))):
                record = decode_version(raw)
                check_not_fine_tuned_from(txn, record)
                freed.add(delete_version_rows(txn, record))
                deleted += 1
            retire_version_numbers(txn, fields, next_revision(txn, name))
            for table in (ALIASES, ALIAS_EVENTS, DEPLOYMENTS, DERIVED):
                txn.delete_range(table, (name,))
            txn.delete(MODELS, (name,))
        delete_unheld_blobs(self._store, self._blobs, freed)
        self._notify(name)
        return deleted
