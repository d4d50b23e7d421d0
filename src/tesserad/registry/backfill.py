"""Upgrade of model records written before they kept `version_count` and `latest_version`.

Run once at start, before the registry answers: each model without the fields gets them
from one walk over its versions, in its own write transaction, with progress in the log.
A store whose records all have them costs one scan of the models table.
"""

from __future__ import annotations

import logging

from tesserad.registry.records import MODEL_KIND, SCHEMA
from tesserad.registry.tables import MODELS, VERSIONS, newest_stored_version, put_model_data
from tesserad.store import Store, decode_record

log = logging.getLogger(__name__)


def backfill_version_counts(store: Store) -> int:
    """Give every model record its version count and latest version; returns how many needed it."""
    with store.read() as txn:
        names = [
            str(key[0])
            for key, raw in txn.scan(MODELS)
            if "version_count" not in decode_record(raw, MODEL_KIND, SCHEMA)[1]
        ]
    if not names:
        return 0
    log.info("backfilling version counts of models", extra={"models": len(names)})
    for done, name in enumerate(names, 1):
        with store.write() as txn:
            raw = txn.get(MODELS, (name,))
            if raw is None:
                continue
            fields = decode_record(raw, MODEL_KIND, SCHEMA)[1]
            fields["version_count"] = txn.count(VERSIONS, (name,))
            fields["latest_version"] = newest_stored_version(txn, name)
            put_model_data(txn, fields)
        log.info(
            "backfilled version counts",
            extra={"model": name, "versions": fields["version_count"], "done": done, "of": len(names)},
        )
    return len(names)
