"""Saved serving configs: per version, the fields a load of it takes when it does not set them
(as Triton keeps a model's config.pbtxt).

Kept in the model's record, under "serving_configs" ({version number: fields}), not in a table
of their own: they travel with the record in the change feed, in backups and restores, and go
with the model when it is deleted; a tesserad from before them reads and rewrites the record
with the key left as it was (it never looks at it), so the store needs no schema bump. The
fields are the serving layer's (tesserad.serving.pool.ServingConfig's, those set): it checks
them before they are saved, the registry keeps them as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tesserad.names import validate_name
from tesserad.registry.tables import VERSIONS, Notify, model_data, no_version, put_model_data
from tesserad.store import Store

_KEY = "serving_configs"


def stored_serving_configs(fields: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """A model record's saved configs by version number (none in a record from before them)."""
    return {int(version): dict(config) for version, config in fields.get(_KEY, {}).items()}


def drop_serving_config(fields: dict[str, Any], version: int) -> None:
    """In a version's deleting transaction: its saved config goes with it."""
    fields.get(_KEY, {}).pop(str(version), None)


class ServingConfigs:
    def __init__(self, store: Store, notify: Notify) -> None:
        self._store = store
        self._notify = notify

    def save_serving_config(self, model: str, version: int, config: Mapping[str, Any]) -> None:
        """Store `config` as the version's saved serving config, in place of the one before; an
        empty one removes it. NotFound for a version that does not exist."""
        validate_name("model", model)
        with self._store.write() as txn:
            fields = model_data(txn, model)
            if not txn.exists(VERSIONS, (model, version)):
                raise no_version(txn, model, version)
            saved = fields.setdefault(_KEY, {})
            if config:
                saved[str(version)] = dict(config)
            else:
                saved.pop(str(version), None)
            put_model_data(txn, fields)
        self._notify(model)

    def serving_config(self, model: str, version: int) -> dict[str, Any]:
        """The version's saved serving config; empty when it has none."""
        validate_name("model", model)
        with self._store.read() as txn:
            return stored_serving_configs(model_data(txn, model)).get(version, {})
