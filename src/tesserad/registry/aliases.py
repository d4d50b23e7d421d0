"""Aliases: names that point at a model's versions ("production", "staging"; "latest" is
reserved and always names the newest), with an audit log of every move."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from typing import Any

from tesserad.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from tesserad.names import RESERVED_ALIASES, validate_name, validate_stored_name, version_like_alias
from tesserad.paging import Page, PageFill, answer_bytes, read_page, resume_key
from tesserad.registry.deployments import (
    current_deployment,
    deployment_aliases,
    redeploy,
    warnings_after_move,
)
from tesserad.registry.records import (
    ALIAS_EVENT_KIND,
    ALIAS_KIND,
    SCHEMA,
    AliasEvent,
    AliasRecord,
    VersionRecord,
    decode_version,
)
from tesserad.registry.tables import (
    ALIAS_EVENTS,
    ALIASES,
    ANONYMOUS,
    LATEST,
    VERSIONS,
    Notify,
    latest_version,
    model_data,
    no_alias,
    no_version,
    put_model_data,
    resolve_number,
    stored_alias,
)
from tesserad.store import ReadTxn, Store, WriteTxn, decode_record, encode_record

# Aliases a model holds. GetModel answers all of them and GetVersion those on the version: at the
# cap, names of 128 characters take about 150 KB of an answer, which leaves a version's 2 MiB of
# params and its text room within gRPC's default 4 MiB. A store from before the cap may hold
# more: they stay readable and movable; only new ones are refused.
MAX_MODEL_ALIASES = 1000


def check_alias_name(alias: str, *, stored: bool = False) -> None:
    """A valid name other than "latest"; with `stored`, also one `validate_stored_name` takes."""
    (validate_stored_name if stored else validate_name)("alias", alias)
    if alias in RESERVED_ALIASES:
        raise InvalidArgument(f"alias {alias!r} is reserved: it always names the newest version")


def check_settable_alias(alias: str) -> None:
    """A name an alias may be set to: `check_alias_name`, and not one that reads as a version."""
    check_alias_name(alias)
    problem = version_like_alias(alias)
    if problem:
        raise InvalidArgument(f"alias {alias!r} {problem}")


def check_alias_room(txn: ReadTxn, model: str, alias: str) -> None:
    """ResourceExhausted when `alias` would be new to a model that holds MAX_MODEL_ALIASES."""
    if stored_alias(txn, model, alias) is None:
        check_room_for_new_alias(txn, model, alias)


def check_room_for_new_alias(txn: ReadTxn, model: str, alias: str) -> None:
    """`check_alias_room` for an alias the caller read and found not set."""
    held = txn.count(ALIASES, (model,))
    if held >= MAX_MODEL_ALIASES:
        raise ResourceExhausted(
            f"model {model!r} has {held:,} aliases; a model holds at most {MAX_MODEL_ALIASES:,}, so that "
            f"one answer can carry them all. Delete aliases it no longer uses (DeleteAlias), or move "
            f"one of them instead of adding {alias!r}"
        )


def with_aliases(txn: ReadTxn, record: VersionRecord) -> VersionRecord:
    """The version record with the aliases that point at it now ("latest" included)."""
    names = [
        str(key[1])
        for key, raw in txn.scan(ALIASES, (record.model,))
        if decode_record(raw, ALIAS_KIND, SCHEMA)[1]["version"] == record.version
    ]
    if latest_version(txn, record.model) == record.version:
        names.append(LATEST)
    return replace(record, aliases=tuple(names))


def move_alias(
    txn: WriteTxn,
    model_fields: dict[str, Any],
    alias: str,
    version: int,
    actor: str,
    expected: int | None,
) -> AliasEvent:
    """Point `alias` at `version` (compare-and-set when `expected` is given; 0: must not exist).

    The move is logged when it changes the version; the caller stores `model_fields`, whose
    event counter this advances.
    """
    model = model_fields["name"]
    stored = stored_alias(txn, model, alias)
    current = int(stored["version"]) if stored else 0
    if expected is not None and expected != current:
        where = f"points at version {current}" if current else "does not exist"
        raise FailedPrecondition(
            f"alias {alias!r} of model {model!r} {where}, not {expected if expected else 'absent'} as expected; "
            "read it again and retry"
        )
    if stored is None:
        check_room_for_new_alias(txn, model, alias)
    event = AliasEvent(model, alias, current, version, time.time(), actor)
    txn.put(
        ALIASES,
        (model, alias),
        encode_record(
            ALIAS_KIND, SCHEMA, {"version": version, "updated_at": event.time, "updated_by": actor}
        ),
    )
    if current != version:
        _log_event(txn, model_fields, event)
    return event


def _log_event(txn: WriteTxn, model_fields: dict[str, Any], event: AliasEvent) -> None:
    seq = int(model_fields["next_event"])
    model_fields["next_event"] = seq + 1
    # An alias move is a change of the model, as MLflow's last_updated_timestamp counts one.
    model_fields["updated_at"] = event.time
    txn.put(ALIAS_EVENTS, (event.model, seq), encode_record(ALIAS_EVENT_KIND, SCHEMA, asdict(event)))


class Aliases:
    """Set, read, list and delete a model's aliases; their history."""

    def __init__(self, store: Store, notify: Notify) -> None:
        self._store = store
        self._notify = notify

    def set_alias(
        self,
        model: str,
        alias: str,
        version: int,
        actor: str = ANONYMOUS,
        expected_version: int | None = None,
    ) -> AliasRecord:
        """Create or move an alias (compare-and-set when expected_version is given; 0 = must not exist).
        A move that leaves the current deployment routing as Deploy would refuse is made (a
        promotion is one); the answer carries the deployment's warnings."""
        validate_name("model", model)
        check_settable_alias(alias)
        if version < 1:
            raise InvalidArgument(f"version must be >= 1, got {version}")
        if expected_version is not None and expected_version < 0:
            raise InvalidArgument(
                "expected_version must be >= 0 (the version the alias points at, 0: it must not exist "
                f"yet), got {expected_version}"
            )
        with self._store.write() as txn:
            fields = model_data(txn, model)
            if not txn.exists(VERSIONS, (model, version)):
                raise no_version(txn, model, version)
            event = move_alias(txn, fields, alias, version, actor, expected_version)
            put_model_data(txn, fields)
            warnings = warnings_after_move(txn, model, alias)
        self._notify(model)
        return AliasRecord(model, alias, version, event.time, actor, warnings)

    def check_room(self, model: str, alias: str) -> None:
        """`check_alias_room` for work that would set `alias` only once it is done (an export)."""
        with self._store.read() as txn:
            check_alias_room(txn, model, alias)

    def get_alias(self, model: str, alias: str) -> AliasRecord:
        validate_name("model", model)
        validate_name("alias", alias)
        with self._store.read() as txn:
            fields = model_data(txn, model)
            if alias == LATEST:
                number = resolve_number(txn, model, None, LATEST)
                created = decode_version(txn.get(VERSIONS, (model, number)) or b"")
                return AliasRecord(model, LATEST, number, created.created_at, created.created_by)
            stored = stored_alias(txn, model, alias)
            if stored is None:
                raise no_alias(txn, fields["name"], alias)
            return AliasRecord(model, alias, stored["version"], stored["updated_at"], stored["updated_by"])

    def list_aliases(self, model: str, page_size_: int = 0, page_token: str = "") -> Page[AliasRecord]:
        """The model's aliases by name, a page at a time; "latest" ends the last page when the
        model has a version. Page size 0 gives as many as one answer holds: every alias of a
        model within MAX_MODEL_ALIASES, as clients from before ListAliases paged expect."""
        validate_name("model", model)
        query = {"list": "aliases", "model": model}
        fill: PageFill[AliasRecord] = PageFill(page_size_, query, default_size=None)
        with self._store.read() as txn:
            model_data(txn, model)
            for key, raw in txn.scan(ALIASES, (model,), after=resume_key(page_token, query)):
                stored = decode_record(raw, ALIAS_KIND, SCHEMA)[1]
                record = AliasRecord(
                    model, str(key[1]), stored["version"], stored["updated_at"], stored["updated_by"]
                )
                if not fill.room(answer_bytes(record)):
                    return fill.page
                fill.add(key, record)
            latest = latest_version(txn, model)
            if latest:
                newest = decode_version(txn.get(VERSIONS, (model, latest)) or b"")
                record = AliasRecord(model, LATEST, latest, newest.created_at, newest.created_by)
                # When the page is full, the next one resumes after the last alias: it holds "latest".
                if fill.room(answer_bytes(record)):
                    fill.add((model, LATEST), record)
        return fill.page

    def delete_alias(self, model: str, alias: str, actor: str = ANONYMOUS) -> None:
        """Refused while the current deployment routes through the alias."""
        validate_stored_name("model", model)
        check_alias_name(alias, stored=True)
        with self._store.write() as txn:
            fields = model_data(txn, model)
            stored = stored_alias(txn, model, alias)
            if stored is None:
                raise no_alias(txn, fields["name"], alias)
            deployment = current_deployment(txn, model)
            if deployment is not None and alias in deployment_aliases(deployment):
                raise FailedPrecondition(
                    f"alias {alias!r} is used by deployment revision {deployment.revision} of model {model!r}; "
                    f"first {redeploy('name')}"
                )
            txn.delete(ALIASES, (model, alias))
            _log_event(txn, fields, AliasEvent(model, alias, int(stored["version"]), 0, time.time(), actor))
            put_model_data(txn, fields)
        self._notify(model)

    def list_alias_history(
        self, model: str, alias: str = "", page_size_: int = 0, page_token: str = ""
    ) -> Page[AliasEvent]:
        """Alias events, newest first; only `alias`'s when given."""
        validate_name("model", model)
        if alias:
            validate_name("alias", alias)

        def event(raw: bytes) -> AliasEvent:
            return AliasEvent(**decode_record(raw, ALIAS_EVENT_KIND, SCHEMA)[1])

        with self._store.read() as txn:
            model_data(txn, model)
            return read_page(
                txn,
                ALIAS_EVENTS,
                (model,),
                query={"list": "alias_history", "model": model, "alias": alias},
                page_token=page_token,
                requested_size=page_size_,
                item=lambda _key, raw: event(raw),
                keep=(lambda _key, raw: event(raw).alias == alias) if alias else None,
                reverse=True,
            )
