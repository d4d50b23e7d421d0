"""The registry's LMDB tables and the reads every registry concern shares, inside the caller's
transaction: a model's stored record, its newest version, the version a number or alias names."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from tesserad.errors import InvalidArgument, NotFound
from tesserad.names import closest, missing_name, validate_name
from tesserad.registry.records import ALIAS_KIND, MODEL_KIND, SCHEMA
from tesserad.store import ReadTxn, WriteTxn, decode_record, encode_record

MODELS = "models"
VERSIONS = "model_versions"
ALIASES = "model_aliases"
ALIAS_EVENTS = "model_alias_events"
DEPLOYMENTS = "deployments"
DERIVED = "derived_versions"
# An ensemble version's members both ways, written and removed with the ensemble version:
# (ensemble model, version, member model, version) and (member model, version, ensemble
# model, version), so a delete finds the ensembles that use a version with one range scan.
ENSEMBLE_MEMBERS = "ensemble_members"
MEMBER_OF = "ensemble_member_of"
# A version whose lineage parent was deleted: (model, version) -> what the parent was (model,
# version, sha256, deleted_at), written in the parent's deleting transaction (its
# derived_versions rows go then), removed with the version. Kept apart from the version's
# record, which never changes once registered.
DELETED_PARENTS = "deleted_parents"
# The versions a training job registered: (job id, model, version), written and removed with the
# version, so that a job registering again (resumed after its first registration was committed)
# finds the version it has instead of adding one.
JOB_VERSIONS = "job_versions"
# A deleted model's next version number: (name,) -> {"next_version": N, "next_event": E,
# "next_revision": R}, written
# in its deleting transaction and taken by the model created again under its name, which numbers
# its versions on from there: a client, job record or config that kept "m v1" never finds another
# artifact under it. Its alias events number on from E likewise, so that a ListAliasHistory page
# token from before the delete resumes into none of the new model's (a row without E: from 1),
# and its deployment revisions from R, so that a revision kept from before matches none of the
# new model's (a row without R: see `deployments.first_revision`).
# A model that never gave a number leaves no row. A name deleted by a tesserad from before
# this table gets its row once at start where the store still names its versions
# (`backfill.backfill_retired_numbers`); one nothing names numbers from 1.
RETIRED_NUMBERS = "model_numbers_retired"
TABLES = [
    MODELS,
    VERSIONS,
    ALIASES,
    ALIAS_EVENTS,
    DEPLOYMENTS,
    DERIVED,
    ENSEMBLE_MEMBERS,
    MEMBER_OF,
    DELETED_PARENTS,
    JOB_VERSIONS,
    RETIRED_NUMBERS,
]

_RETIRED_KIND = "model_numbers_retired"
_RETIRED_SCHEMA = 1

LATEST = "latest"
ANONYMOUS = "anonymous"

# Called with a model's name after a commit that may move where its requests go.
Notify = Callable[[str], None]


def model_missing(txn: ReadTxn, name: str) -> NotFound:
    """NotFound for a model that does not exist, naming a stored one close to it first."""
    return missing_name(txn, MODELS, "model", name, "create it with CreateModel")


def new_model_data(txn: WriteTxn, name: str, description: str, tags: dict[str, str]) -> dict[str, Any]:
    """A new model's stored fields, in its creating transaction; `next_version` and `next_event`
    number its versions and alias events, from 1 or on from the model of its name deleted before
    (`RETIRED_NUMBERS`, whose row the new model's fields take over), and `first_version` and
    `first_event` keep those starts. `version_count` and `latest_version` are kept by each
    version's register and delete transaction so that reading a model never walks its versions."""
    now = time.time()
    first, first_event, first_revision = _retired(txn, name)
    txn.delete(RETIRED_NUMBERS, (name,))
    revisions = {"first_revision": first_revision} if first_revision else {}
    return revisions | {
        "name": name,
        "description": description,
        "tags": dict(tags),
        "created_at": now,
        "updated_at": now,
        "first_version": first,
        "next_version": first,
        "first_event": first_event,
        "next_event": first_event,
        "version_count": 0,
        "latest_version": 0,
    }


def _retired(txn: ReadTxn, name: str) -> tuple[int, int, int]:
    """The next version, alias event and deployment revision numbers `name` keeps; 1, 1 and 0
    without a row (0: none kept, also in a row from before revisions were kept per name)."""
    raw = txn.get(RETIRED_NUMBERS, (name,))
    if raw is None:
        return 1, 1, 0
    row = decode_record(raw, _RETIRED_KIND, _RETIRED_SCHEMA)[1]
    return int(row["next_version"]), int(row.get("next_event", 1)), int(row.get("next_revision", 0))


def retire_version_numbers(txn: WriteTxn, fields: dict[str, Any], next_revision: int) -> None:
    """In a model's deleting transaction: keep the numbers its next version, alias event and
    deployment revision would have got, so that a model created again under its name numbers on
    from them. Where a tesserad from before `RETIRED_NUMBERS` created the name again (from 1,
    leaving the row), the row's may be higher: the higher is kept."""
    raise_retired_number(
        txn, fields["name"], int(fields["next_version"]), int(fields["next_event"]), next_revision
    )


def raise_retired_number(
    txn: WriteTxn, name: str, next_version: int, next_event: int = 1, next_revision: int = 0
) -> bool:
    """Keep `next_version` (and `next_event`, `next_revision`) as the number a model created
    again under `name` starts from, unless its row keeps a higher one; whether the row changed. A
    name that gave no number (1) gets no row, so that names created and deleted leave nothing
    behind."""
    kept_version, kept_event, kept_revision = _retired(txn, name)
    if next_version <= kept_version and next_event <= kept_event and next_revision <= kept_revision:
        return False
    if max(next_version, next_event, next_revision) <= 1 and not kept_revision:
        return False
    row = {"next_version": max(next_version, kept_version), "next_event": max(next_event, kept_event)}
    if max(next_revision, kept_revision):
        row["next_revision"] = max(next_revision, kept_revision)
    txn.put(RETIRED_NUMBERS, (name,), encode_record(_RETIRED_KIND, _RETIRED_SCHEMA, row))
    return True


def raise_next_version(txn: WriteTxn, name: str, next_version: int) -> bool:
    """Make the live model `name` number its next version at `next_version` or past it, and its
    next version, alias event and first deployment revision past the numbers its name keeps (where
    a tesserad from before `RETIRED_NUMBERS` created it again from 1, leaving the row), whose row
    it takes over as a model created now does; whether its record changed. `numbers_skipped`
    counts the version numbers so passed over, which no version got."""
    fields = model_data(txn, name)
    kept_version, kept_event, kept_revision = _retired(txn, name)
    txn.delete(RETIRED_NUMBERS, (name,))
    skipped = max(next_version, kept_version) - int(fields["next_version"])
    # Its events from here number past those of the model deleted under its name, so that a
    # ListAliasHistory page token from before that delete resumes into none of them, and so does
    # the row its own delete keeps. first_event moves with next_event: `alias_events`, which the
    # change feed compares, stays, and no alias move is told.
    events_skipped = kept_event - int(fields["next_event"])
    # A model that tesserad created has no first_revision of its own: it takes the row's, so that
    # its revisions, and those its own delete keeps, number past the deleted model's.
    revisions_kept = kept_revision > int(fields.get("first_revision", 0))
    if skipped <= 0 and events_skipped <= 0 and not revisions_kept:
        return False
    if revisions_kept:
        fields["first_revision"] = kept_revision
    if skipped > 0:
        fields["next_version"] = int(fields["next_version"]) + skipped
        fields["numbers_skipped"] = int(fields.get("numbers_skipped", 0)) + skipped
    if events_skipped > 0:
        fields["next_event"] = kept_event
        fields["first_event"] = int(fields.get("first_event", 1)) + events_skipped
    put_model_data(txn, fields)
    return True


def model_data(txn: ReadTxn, name: str) -> dict[str, Any]:
    """The model's stored fields; NotFound when there is no such model."""
    raw = txn.get(MODELS, (name,))
    if raw is None:
        raise model_missing(txn, name)
    return decode_record(raw, MODEL_KIND, SCHEMA)[1]


def put_model_data(txn: WriteTxn, data: dict[str, Any]) -> None:
    txn.put(MODELS, (data["name"],), encode_record(MODEL_KIND, SCHEMA, data))


def latest_version(txn: ReadTxn, model: str) -> int:
    """The newest version number as the model's record keeps it; 0 when the model has none."""
    return int(model_data(txn, model)["latest_version"])


def newest_stored_version(txn: ReadTxn, model: str) -> int:
    """The newest version row's number (one cursor step); 0 when the model has none."""
    for key, _ in txn.scan(VERSIONS, (model,), reverse=True, limit=1):
        return int(key[1])
    return 0


def no_version(txn: ReadTxn, model: str, version: int) -> NotFound:
    """NotFound for a version number the model lacks (for the model itself when there is no
    such model)."""
    return version_missing(model, version, latest_version(txn, model))


def version_missing(model: str, version: int, latest: int) -> NotFound:
    """NotFound for version `version` of a model whose newest is `latest` (0: none); it names the
    newest and how to list them, as numbers have gaps. A replica says it in the same words."""
    newest = f"the newest is {latest}" if latest else "it has none yet"
    return NotFound(f"model {model!r} has no version {version} ({newest}; ListVersions lists them)")


def no_versions_yet(model: str) -> NotFound:
    """NotFound for `latest` of a model without versions. A replica says it in the same words."""
    return NotFound(f"model {model!r} has no versions yet; upload one with UploadVersion")


def stored_alias(txn: ReadTxn, model: str, alias: str) -> dict[str, Any] | None:
    """A set alias's stored fields (version, updated_at, updated_by); None when it is not set."""
    raw = txn.get(ALIASES, (model, alias))
    return None if raw is None else decode_record(raw, ALIAS_KIND, SCHEMA)[1]


def resolve_number(txn: ReadTxn, model: str, version: int | None, alias: str | None) -> int:
    """The version number a number or an alias names ("latest" when neither is given)."""
    data = model_data(txn, model)
    if version:
        if version < 0:
            raise InvalidArgument(f"version must be >= 1, got {version}")
        return version
    alias = alias or LATEST
    if alias == LATEST:
        latest = int(data["latest_version"])
        if not latest:
            raise no_versions_yet(model)
        return latest
    validate_name("alias", alias)
    stored = stored_alias(txn, model, alias)
    if stored is None:
        raise no_alias(txn, model, alias)
    return int(stored["version"])


# Aliases a "has no alias" message names; past these it says how many more there are.
LISTED_ALIASES = 10


def no_alias(txn: ReadTxn, model: str, alias: str) -> NotFound:
    """`alias_not_set` with the aliases the model holds (read only on the error path; at most
    MAX_MODEL_ALIASES)."""
    return alias_not_set(model, alias, [str(key[1]) for key, _ in txn.scan(ALIASES, (model,))])


def alias_not_set(model: str, alias: str, held: list[str]) -> NotFound:
    """NotFound for an alias that is not set, naming those `held` (sorted: the first few, a
    near miss first); an alias written as the tables show a version ("v2") is most likely that
    version, so the message says how to name it. A replica says it in the same words."""
    numbered = re.fullmatch(r"v(\d+)", alias)
    hint = f" (to name version {numbered[1]}, write {numbered[1]})" if numbered else ""
    if not held:
        return NotFound(
            f"model {model!r} has no alias {alias!r}{hint} and no aliases at all; set one with SetAlias"
        )
    listed = ", ".join(repr(name) for name in held[:LISTED_ALIASES])
    more = f" and {len(held) - LISTED_ALIASES:,} more" if len(held) > LISTED_ALIASES else ""
    near = closest(held, alias)
    fix = f"{near}Or set it with SetAlias" if near else "set it with SetAlias"
    return NotFound(f"model {model!r} has no alias {alias!r}{hint}; it has {listed}{more}; {fix}")
