"""Deployments: how requests without a version or alias are routed (weighted routes and a
shadow), kept as a history of revisions with rollback.

Every Deploy and Rollback adds a revision; the newest is the model's deployment. A Deploy of
what is deployed already (the same routes, in any order, and shadow) adds none and returns the
current revision, so a Rollback after it restores the deployment before, not the same routes. Rolling back
the first deployment adds a revision without routes (`undeployed`): the model then has no
deployment and requests route as before any, to the latest version.

History is bounded (`registry.deployment_history`, N): the write that adds a revision drops those
older than the newest N, except the N - 1 that Rollbacks from the new one would restore in turn,
so that N - 1 Rollbacks always succeed as long as what they restore still resolves. Each start
bounds every model's history the same way, so a lowered N holds for models not deployed again. A revision
holds nothing (DeleteVersion and DeleteAlias look only at the current one), so a dropped one
releases nothing.

Revisions number per name, on across a model's delete and re-creation as its version numbers
do: a model created again numbers its first revision after the highest the deleted one reached
(`tables.RETIRED_NUMBERS`), so a revision a client kept from before never names one of the new
model's and its compare-and-set (`expected_revision`) is refused; a name never deleted numbers
from 1.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from tesserad.config import format_size
from tesserad.errors import FailedPrecondition, InvalidArgument, NotFound
from tesserad.names import validate_name
from tesserad.paging import Page, read_page
from tesserad.registry.artifacts import signature_differences, signature_words
from tesserad.registry.records import (
    ALIAS_EVENT_KIND,
    SCHEMA,
    DeploymentRecord,
    Route,
    Shadow,
    Target,
    decode_deployment,
    decode_version,
    encode_deployment,
)
from tesserad.registry.tables import (
    ALIAS_EVENTS,
    ANONYMOUS,
    DEPLOYMENTS,
    LATEST,
    MODELS,
    VERSIONS,
    Notify,
    model_data,
    no_version,
    put_model_data,
    resolve_number,
)
from tesserad.store import Key, ReadTxn, Store, WriteTxn, decode_record

log = logging.getLogger(__name__)

# Models whose revisions one write transaction of the start-up pruning bounds.
_PRUNE_BATCH = 256
# Each change a model's followers receive and each page of its history carry the comment.
MAX_COMMENT = 4 * 2**10
# The "meta" row with the highest deployment revision a deleted model had reached, store-wide, as
# a tesserad from before revisions were kept per name (`tables.RETIRED_NUMBERS`) wrote it. Read
# only for a name it deleted and created again (`first_revision`); no longer written.
RETIRED_REVISIONS = ("deployment_revisions_retired",)
_RETIRED_SCHEMA = 1


def _retired_store_wide(txn: ReadTxn) -> int:
    raw = txn.get("meta", RETIRED_REVISIONS)
    return 0 if raw is None else int(decode_record(raw, RETIRED_REVISIONS[0], _RETIRED_SCHEMA)[1]["revision"])


def next_revision(txn: ReadTxn, model: str) -> int:
    """The revision `model`'s deleting transaction keeps for its name (`tables.retire_version_numbers`):
    past its newest and past its first. A model an older tesserad created again and deployed from 1
    may have taken a higher first revision from its name's row since (`tables.raise_next_version`)."""
    latest = latest_revision(txn, model)
    first = first_revision(txn, model_data(txn, model))
    return max(latest.revision + 1, first) if latest is not None else first


def first_revision(txn: ReadTxn, fields: dict[str, Any]) -> int:
    """A model's first revision: after those of the model deleted under its name (`first_revision`,
    taken from its `RETIRED_NUMBERS` row). A model created again where its name's row was kept by
    a tesserad from before (none kept, yet its versions number on: `first_version` > 1) numbers
    on from the highest any deleted model reached, which is all that tesserad kept; any other from 1."""
    if "first_revision" in fields:
        return int(fields["first_revision"])
    return _retired_store_wide(txn) + 1 if int(fields.get("first_version", 1)) > 1 else 1


def redeploy(uses: str) -> str:
    """How to end a use (`uses`: "serve", "name") the current deployment makes of a version or
    alias, for a refusal it causes. Names RPCs; the CLI shows its commands instead."""
    return (
        f"deploy routes that do not {uses} it (Deploy), or roll back to a deployment that does not (Rollback)"
    )


def latest_revision(txn: ReadTxn, model: str) -> DeploymentRecord | None:
    """The newest revision, an undeployed one included; None when the model was never deployed."""
    for _, raw in txn.scan(DEPLOYMENTS, (model,), reverse=True, limit=1):
        return decode_deployment(raw)
    return None


def current_deployment(txn: ReadTxn, model: str) -> DeploymentRecord | None:
    """The deployment requests follow now; None when there is none."""
    latest = latest_revision(txn, model)
    return None if latest is None or latest.undeployed else latest


def deployment_aliases(deployment: DeploymentRecord) -> set[str]:
    """The aliases its routes and shadow name."""
    targets = [r.target for r in deployment.routes]
    if deployment.shadow:
        targets.append(deployment.shadow.target)
    return {t.alias for t in targets if t.alias}


def deployment_versions(txn: ReadTxn, deployment: DeploymentRecord) -> set[int]:
    """The versions its routes and shadow resolve to now."""
    current = resolved(txn, deployment)
    versions = {r.resolved_version for r in current.routes}
    if current.shadow:
        versions.add(current.shadow.resolved_version)
    return versions


def resolved(txn: ReadTxn, deployment: DeploymentRecord) -> DeploymentRecord:
    """The deployment with each target's version as it resolves now (0: it no longer resolves)."""

    def number(target: Target) -> int:
        if target.version:
            # An earlier revision may name a version deleted since.
            return target.version if txn.exists(VERSIONS, (deployment.model, target.version)) else 0
        try:
            return resolve_number(txn, deployment.model, None, target.alias)
        except NotFound:
            return 0

    routes = tuple(replace(r, resolved_version=number(r.target)) for r in deployment.routes)
    shadow = (
        replace(deployment.shadow, resolved_version=number(deployment.shadow.target))
        if deployment.shadow
        else None
    )
    return replace(deployment, routes=routes, shadow=shadow)


def _kept_for_rollbacks(history: int) -> str:
    """What a history of `history` revisions keeps for Rollbacks, in words."""
    if history == 1:
        return "so a model keeps only its current deployment, none for a Rollback to restore"
    if history == 2:
        return "so a model keeps the one deployment before its current one that a Rollback restores"
    return f"so a model keeps the {history - 1} deployments before its current one that Rollbacks restore"


def _same_routing(a: DeploymentRecord, b: DeploymentRecord) -> bool:
    """Whether the two send requests alike: the same weight per target, the same shadow."""

    def shadow(d: DeploymentRecord) -> tuple[Target, int] | None:
        return (d.shadow.target, d.shadow.percent) if d.shadow else None

    weights = {r.target: r.weight for r in a.routes}
    return weights == {r.target: r.weight for r in b.routes} and shadow(a) == shadow(b)


def _check_target(txn: ReadTxn, model: str, target: Target, where: str) -> None:
    if bool(target.version) == bool(target.alias):
        raise InvalidArgument(f"{where} needs exactly one of version or alias")
    if target.version:
        if target.version < 1:
            raise InvalidArgument(f"{where}.version must be >= 1, got {target.version}")
        if not txn.exists(VERSIONS, (model, target.version)):
            raise NotFound(f"{where}: {no_version(txn, model, target.version).message}")
        return
    validate_name(f"{where}.alias", target.alias)
    try:
        resolve_number(txn, model, None, target.alias)
    except NotFound as exc:
        raise NotFound(f"{where}: {exc.message}") from None


def _check_targets(txn: ReadTxn, deployment: DeploymentRecord) -> None:
    for i, route in enumerate(deployment.routes):
        _check_target(txn, deployment.model, route.target, f"routes[{i}]")
    if deployment.shadow is not None:
        _check_target(txn, deployment.model, deployment.shadow.target, "shadow")


def _shadow_of_the_routes(txn: ReadTxn, deployment: DeploymentRecord) -> str:
    """The shadow in words ("version 2", "alias 'x' (version 2)") when every route sends requests
    to the version it resolves to now, so that it would copy no request; "" otherwise."""
    now = resolved(txn, deployment)
    if now.shadow is None:
        return ""
    version = now.shadow.resolved_version
    if not all(route.resolved_version == version for route in now.routes):
        return ""
    target = now.shadow.target
    return f"version {version}" if target.version else f"alias {target.alias!r} (version {version})"


def _check_shadow_differs(txn: ReadTxn, deployment: DeploymentRecord) -> None:
    """A shadow copies requests to a version beside the one that answers them: refused when every
    route sends requests to the version the shadow resolves to."""
    named = _shadow_of_the_routes(txn, deployment)
    if named:
        raise InvalidArgument(
            f"shadow names {named}, the version every route sends requests to, so each copied "
            "request would run on it twice; shadow a version the routes do not serve, or deploy without a shadow"
        )


def _target_words(target: Target) -> str:
    return f"version {target.version}" if target.version else f"alias {target.alias!r}"


def _routes_to_one_version(now: DeploymentRecord) -> list[tuple[str, int, int]]:
    """For each version that two or more routes of a resolved deployment send requests to: those
    routes in words ("routes[0] (alias 'prod') and routes[1] (version 2) both resolve to version
    2"), the version, and their weights added. A route that no longer resolves is in none."""
    routed: dict[int, list[int]] = {}
    for i, route in enumerate(now.routes):
        if route.resolved_version:
            routed.setdefault(route.resolved_version, []).append(i)
    groups = []
    for version, indexes in routed.items():
        if len(indexes) > 1:
            named = [f"routes[{i}] ({_target_words(now.routes[i].target)})" for i in indexes]
            listed = f"{', '.join(named[:-1])} and {named[-1]} {'both' if len(named) == 2 else 'all'}"
            weight = sum(now.routes[i].weight for i in indexes)
            groups.append((f"{listed} resolve to version {version}", version, weight))
    return groups


def _check_routes_differ(txn: ReadTxn, deployment: DeploymentRecord) -> None:
    """A split sends each route's share to another version: refused when routes resolve to one
    version (a canary of a version against itself), as a shadow of the routed version is."""
    for routes, version, _ in _routes_to_one_version(resolved(txn, deployment)):
        raise InvalidArgument(
            f"{routes}, so they would split nothing between them; deploy one route to version {version} "
            "with their weights added, or first point an alias at the version it should send requests to "
            "(SetAlias)"
        )


def _signature_disagreements(txn: ReadTxn, now: DeploymentRecord) -> list[tuple[str, str, str]]:
    """For each target of a resolved deployment whose version's signature differs from that of
    routes[0]'s (modulo dynamic dimensions: `signature_differences` with `any_dynamic`): it ("routes[1] (alias 'x')"), routes[0] in words, and the two versions'
    signatures and their differences in words. A target that no longer resolves is in none."""
    if not now.routes or not now.routes[0].resolved_version:
        return []
    first = now.routes[0].resolved_version
    signatures = {}
    named = [(f"routes[{i}]", r.target, r.resolved_version) for i, r in enumerate(now.routes)]
    if now.shadow is not None:
        named.append(("shadow", now.shadow.target, now.shadow.resolved_version))
    for _, _, version in named:
        raw = txn.get(VERSIONS, (now.model, version)) if version else None
        if raw is not None:
            signatures[version] = decode_version(raw).signature
    found = []
    for where, target, version in named[1:]:
        differences = (
            signature_differences(
                signatures[version],
                signatures[first],
                any_dynamic=True,
                names=(f"version {version}", f"version {first}"),
            )
            if version in signatures
            else []
        )
        if differences:
            words = (
                f"version {version} (signature: {signature_words(signatures[version])}) and version "
                f"{first} (signature: {signature_words(signatures[first])}) disagree: {'; '.join(differences)}"
            )
            found.append((f"{where} ({_target_words(target)})", where, words))
    return found


def _check_signatures_agree(txn: ReadTxn, deployment: DeploymentRecord) -> None:
    """Routes split requests without a version among their versions, and a shadow's answers are
    compared output by output with the routed one's: refused where a version's signature differs
    from routes[0]'s, so that a request's answer has one shape whichever version serves it."""
    for _, where, words in _signature_disagreements(txn, resolved(txn, deployment)):
        raise FailedPrecondition(
            f"{where} and routes[0] send requests to versions that answer differently: {words}; route "
            "to versions of one signature, or register the new signature as a model of its own"
        )


def deployment_warnings(txn: ReadTxn, now: DeploymentRecord) -> tuple[str, ...]:
    """What a resolved deployment that Deploy would refuse now routes to, in words: aliases moved
    since it was deployed (SetAlias, or a version registered with an alias: an upload, an export,
    a training job's register_as; `latest` moves only to a new version) so that routes resolve to
    one version, its shadow to the version every route serves, or a target to a version whose
    signature differs from routes[0]'s. Such moves are made (a promotion is one), and requests
    follow them; the deployment's answers say so, and so do those of the move where it reports one
    (`warnings_after_move`)."""
    warnings = [
        f"{routes} now, so it answers their {weight}% and they split nothing; deploy one route to it "
        "(Deploy), or move one of the aliases (SetAlias)"
        for routes, _, weight in _routes_to_one_version(now)
    ]
    shadow = now.shadow
    if (
        shadow is not None
        and shadow.resolved_version
        and all(route.resolved_version == shadow.resolved_version for route in now.routes)
    ):
        warnings.append(
            f"shadow ({_target_words(shadow.target)}) resolves to version {shadow.resolved_version} now, "
            "the version every route sends requests to, so it copies no request; deploy without the "
            "shadow (Deploy), or move an alias (SetAlias)"
        )
    warnings += [
        f"{target} now sends requests to a version that answers differently from routes[0] "
        f"({_target_words(now.routes[0].target)}): {words}; deploy versions of one signature (Deploy), "
        "or move the alias back (SetAlias)"
        for target, _, words in _signature_disagreements(txn, now)
    ]
    return tuple(warnings)


def read_as_current(txn: ReadTxn, deployment: DeploymentRecord) -> DeploymentRecord:
    """The model's deployment now, resolved, with its warnings."""
    now = resolved(txn, deployment)
    return replace(now, warnings=deployment_warnings(txn, now))


def warnings_after_move(txn: ReadTxn, model: str, alias: str) -> tuple[str, ...]:
    """The current deployment's warnings after `alias` moved, where the deployment names it."""
    deployment = current_deployment(txn, model)
    if deployment is None or alias not in deployment_aliases(deployment):
        return ()
    return deployment_warnings(txn, resolved(txn, deployment))


def _gone_targets(txn: ReadTxn, deployment: DeploymentRecord) -> tuple[list[str], bool]:
    """The targets of an earlier revision that no longer resolve, in words, and whether an
    alias is among them."""
    now = resolved(txn, deployment)
    named = [(f"routes[{i}]", r.target, r.resolved_version) for i, r in enumerate(now.routes)]
    if now.shadow is not None:
        named.append(("shadow", now.shadow.target, now.shadow.resolved_version))
    gone = [
        f"version {target.version} (its {where}) was deleted"
        if target.version
        else f"alias {target.alias!r} (its {where}) is no longer set"
        for where, target, version in named
        if not version
    ]
    return gone, any(not version and target.alias for _, target, version in named)


def _move_back(txn: ReadTxn, restored: DeploymentRecord) -> str:
    """How a Rollback refused because aliases moved since `restored` was deployed may move them back,
    in words: the aliases it names that moved since, or one of them where the alias history cannot
    tell (a clock set back)."""
    named = deployment_aliases(restored) - {LATEST}
    if not named:
        return ""
    moved: set[str] = set()
    for _, raw in txn.scan(ALIAS_EVENTS, (restored.model,), reverse=True):
        event = decode_record(raw, ALIAS_EVENT_KIND, SCHEMA)[1]
        if event["time"] < restored.created_at:
            break
        if event["alias"] in named:
            moved.add(event["alias"])
    if not moved:
        return f", or move one of {', '.join(f'alias {a!r}' for a in sorted(named))} back with SetAlias"
    return f", or move {' and '.join(f'alias {a!r}' for a in sorted(moved))} back with SetAlias"


def _check_expected_argument(expected: int | None) -> None:
    if expected is not None and expected < 0:
        raise InvalidArgument(
            "expected_revision must be >= 0 (the model's newest deployment revision, 0: never "
            f"deployed), got {expected}"
        )


def _check_expected(model: str, latest: DeploymentRecord | None, expected: int | None) -> None:
    """Compare-and-set on the newest revision (`expected` 0: the model was never deployed)."""
    current = latest.revision if latest else 0
    if expected is None or current == expected:
        return
    where = f"is at deployment revision {current}" if current else "was never deployed"
    wanted = f"revision {expected}" if expected else "revision 0 (never deployed)"
    came = ": another deploy or rollback came first" if current > expected else ""
    raise FailedPrecondition(
        f"model {model!r} {where}, where the call expected {wanted}{came}; read its deployment history "
        "again (ListDeployments) and retry if the change still stands"
    )


def _droppable(txn: ReadTxn, latest: DeploymentRecord, history: int) -> list[Key]:
    """The keys of `latest`'s model's revisions older than the newest `history`, except the
    `history` - 1 that Rollbacks from `latest` would restore in turn (its chain of previous
    revisions)."""
    oldest_kept = latest.revision - history + 1
    if oldest_kept <= 1:
        return []
    oldest = next(txn.scan(DEPLOYMENTS, (latest.model,), limit=1))[0]
    if int(oldest[1]) >= oldest_kept:
        return []  # the common case, in two reads
    restorable: set[int] = set()
    previous = latest.previous_revision
    while previous and len(restorable) < history - 1:
        restorable.add(previous)
        raw = txn.get(DEPLOYMENTS, (latest.model, previous))
        previous = decode_deployment(raw).previous_revision if raw is not None else 0
    dropped = []
    for key, _ in txn.scan(DEPLOYMENTS, (latest.model,)):
        if int(key[1]) >= oldest_kept:
            break
        if int(key[1]) not in restorable:
            dropped.append(key)
    return dropped


def _prune(txn: WriteTxn, latest: DeploymentRecord, history: int) -> int:
    """Drop what `_droppable` names; how many it dropped."""
    dropped = _droppable(txn, latest, history)
    for key in dropped:
        txn.delete(DEPLOYMENTS, key)
    return len(dropped)


def _over_history(txn: ReadTxn, model: str, history: int) -> bool:
    """Whether `_prune` would drop any of `model`'s revisions: a model that keeps old revisions
    only because rollbacks restore them is not over, so it gets no write at each start."""
    latest = latest_revision(txn, model)
    return latest is not None and bool(_droppable(txn, latest, history))


def prune_histories(store: Store, history: int) -> None:
    """Bound every model's revisions at start as the write that adds one does (`_prune`): a
    lowered registry.deployment_history holds from the next start, also for a model never
    deployed again. Run at every start (the setting may change at any), so not a one-time pass
    with a marker; a model within the bound costs two or three reads, one that keeps older
    revisions only for its rollbacks a walk of that chain, and neither a write."""
    with store.read() as txn:
        over = [str(key[0]) for key, _ in txn.scan(MODELS) if _over_history(txn, str(key[0]), history)]
    dropped = 0
    for start in range(0, len(over), _PRUNE_BATCH):
        # Frees space: may use the map's reserve, so that a full store can start and shrink.
        with store.write(reserved=True) as txn:
            for model in over[start : start + _PRUNE_BATCH]:
                latest = latest_revision(txn, model)
                if latest is not None:
                    dropped += _prune(txn, latest, history)
    if dropped:
        log.info(
            "pruned deployment history to registry.deployment_history",
            extra={"models": len(over), "revisions": dropped, "history": history},
        )


def _touch(txn: WriteTxn, fields: dict[str, Any], record: DeploymentRecord) -> None:
    """A deployment revision is a change of its model: its `updated_at` follows."""
    fields["updated_at"] = record.created_at
    put_model_data(txn, fields)


class Deployments:
    """Deploy, read, list and roll back a model's deployment revisions, keeping `history` of
    them per model (see the module's docstring)."""

    def __init__(self, store: Store, notify: Notify, history: int) -> None:
        self._store = store
        self._notify = notify
        self._history = history

    def deploy(
        self,
        model: str,
        routes: list[Route],
        shadow: Shadow | None = None,
        comment: str = "",
        actor: str = ANONYMOUS,
        expected_revision: int | None = None,
    ) -> DeploymentRecord:
        """A new deployment revision: weights 1..100 summing to 100, every target resolvable; the
        current revision, unchanged, when it routes the same already. With `expected_revision`,
        only if the newest revision is that one (0: never deployed)."""
        validate_name("model", model)
        _check_expected_argument(expected_revision)
        if not routes:
            raise InvalidArgument("routes must name at least one version or alias with a weight")
        for i, route in enumerate(routes):
            if not 1 <= route.weight <= 100:
                raise InvalidArgument(f"routes[{i}].weight must be 1..100, got {route.weight}")
        first: dict[Target, int] = {}
        for i, route in enumerate(routes):
            if route.target in first:
                target = route.target
                words = f"version {target.version}" if target.version else f"alias {target.alias!r}"
                raise InvalidArgument(
                    f"routes[{i}] names {words} again (routes[{first[target]}] does); give it one route "
                    "with the weights added"
                )
            first[route.target] = i
        total = sum(r.weight for r in routes)
        if total != 100:
            raise InvalidArgument(
                f"route weights are percents of the traffic and must sum to 100, got {total}"
            )
        if shadow is not None and not 1 <= shadow.percent <= 100:
            raise InvalidArgument(f"shadow.percent must be 1..100, got {shadow.percent}")
        size = len(comment.encode())
        if size > MAX_COMMENT:
            raise InvalidArgument(
                f"comment takes at most {format_size(MAX_COMMENT)}, this one {format_size(size)} ({size} bytes); "
                "say more where the change is tracked and link to it"
            )
        with self._store.write() as txn:
            fields = model_data(txn, model)
            latest = latest_revision(txn, model)
            _check_expected(model, latest, expected_revision)
            record = DeploymentRecord(
                model=model,
                revision=latest.revision + 1 if latest else first_revision(txn, fields),
                routes=tuple(Route(r.target, r.weight) for r in routes),
                shadow=Shadow(shadow.target, shadow.percent) if shadow else None,
                created_at=time.time(),
                created_by=actor,
                comment=comment,
                previous_revision=latest.revision if latest else 0,
            )
            # Before the checks: aliases moved since (a promotion) may route the current deployment
            # as they refuse, and sending it again still changes nothing.
            if latest is not None and not latest.undeployed and _same_routing(latest, record):
                return read_as_current(txn, latest)
            _check_targets(txn, record)
            _check_shadow_differs(txn, record)
            _check_routes_differ(txn, record)
            _check_signatures_agree(txn, record)
            txn.put(DEPLOYMENTS, (model, record.revision), encode_deployment(record))
            _touch(txn, fields, record)
            _prune(txn, record, self._history)
            result = read_as_current(txn, record)
        self._notify(model)
        return result

    def get_deployment(self, model: str) -> DeploymentRecord:
        """The current deployment with each target's resolved version; NotFound when none."""
        validate_name("model", model)
        with self._store.read() as txn:
            model_data(txn, model)
            latest = latest_revision(txn, model)
            if latest is None:
                raise NotFound(f"model {model!r} has no deployment; create one with Deploy")
            if latest.undeployed:
                raise NotFound(
                    f"model {model!r} has no deployment: revision {latest.revision} rolled it back to none, "
                    "so requests without a version or alias go to its latest version; create one with Deploy"
                )
            return read_as_current(txn, latest)

    def list_deployments(
        self, model: str, page_size_: int = 0, page_token: str = ""
    ) -> Page[DeploymentRecord]:
        """Deployment history, newest first (undeployed revisions included); the first page's first
        revision is the deployment now, and it alone carries warnings of what it routes to."""
        validate_name("model", model)
        with self._store.read() as txn:
            model_data(txn, model)
            page = read_page(
                txn,
                DEPLOYMENTS,
                (model,),
                query={"list": "deployments", "model": model},
                page_token=page_token,
                requested_size=page_size_,
                item=lambda _key, raw: resolved(txn, decode_deployment(raw)),
                reverse=True,
            )
            if not page_token and page.items:
                page.items[0] = replace(page.items[0], warnings=deployment_warnings(txn, page.items[0]))
            return page

    def rollback(
        self, model: str, actor: str = ANONYMOUS, expected_revision: int | None = None
    ) -> DeploymentRecord:
        """Restore what was deployed before the current revision, as a new revision.

        Before the first deployment there was none, so rolling it back records an undeployed
        revision. A revision that routes as the current one is passed over. The new revision's predecessor is the restored one's, so repeated rollbacks
        walk the history back to no deployment; one more is FailedPrecondition. With
        `expected_revision`, only if the newest revision is that one. So is one whose
        restored revision no longer routes as it did: a target gone, its shadow resolving now
        to the version every route serves, or a target to a version whose signature differs from
        routes[0]'s, which Deploy refuses too.
        """
        validate_name("model", model)
        _check_expected_argument(expected_revision)
        with self._store.write() as txn:
            fields = model_data(txn, model)
            latest = latest_revision(txn, model)
            _check_expected(model, latest, expected_revision)
            if latest is None:
                raise FailedPrecondition(
                    f"model {model!r} has no earlier deployment to roll back to; it was never deployed"
                )
            if latest.undeployed and not latest.previous_revision:
                raise FailedPrecondition(
                    f"model {model!r} has no deployment to roll back: revision {latest.revision} rolled it "
                    "back to none, and requests without a version or alias go to its latest version"
                )
            restored: DeploymentRecord | None = None
            previous = latest.previous_revision
            while previous:
                raw = txn.get(DEPLOYMENTS, (model, previous))
                if raw is None:
                    raise FailedPrecondition(
                        f"model {model!r} cannot roll back to deployment revision {previous}: it is no "
                        f"longer kept (registry.deployment_history is {self._history}, "
                        f"{_kept_for_rollbacks(self._history)}); deploy what should serve now with Deploy, "
                        "or raise registry.deployment_history to keep more"
                    )
                restored = decode_deployment(raw)
                # An older daemon recorded a Deploy of what was deployed as a revision of its own.
                if latest.undeployed or restored.undeployed or not _same_routing(restored, latest):
                    break
                previous, restored = restored.previous_revision, None
            if restored is not None:
                gone, alias_gone = _gone_targets(txn, restored)
                if gone:
                    # The model and the revision exist; what it routes to does not any more.
                    fix = "set the alias again with SetAlias, or " if alias_gone else ""
                    raise FailedPrecondition(
                        f"model {model!r} cannot roll back to deployment revision {restored.revision}: "
                        f"{'; '.join(gone)}; {fix}deploy what should serve now with Deploy"
                    )
                back = _move_back(txn, restored)
                shadow = _shadow_of_the_routes(txn, restored)
                if shadow:
                    # Aliases moved since: restored as it was, it would copy nothing, which Deploy refuses.
                    raise FailedPrecondition(
                        f"model {model!r} cannot roll back to deployment revision {restored.revision}: its "
                        f"shadow names {shadow}, the version every route sends requests to now, so it would "
                        f"copy no request; deploy what should serve now with Deploy (its routes without the "
                        f"shadow){back}"
                    )
                for routes, _, _ in _routes_to_one_version(resolved(txn, restored)):
                    # Aliases moved since: restored as it was, it would split nothing, which Deploy refuses.
                    raise FailedPrecondition(
                        f"model {model!r} cannot roll back to deployment revision {restored.revision}: its "
                        f"{routes} now, so they would split nothing between them; deploy what should serve "
                        f"now with Deploy{back}"
                    )
                now = resolved(txn, restored)
                for target, _, words in _signature_disagreements(txn, now):
                    # Aliases moved since, or a revision older than the check: Deploy refuses it too.
                    raise FailedPrecondition(
                        f"model {model!r} cannot roll back to deployment revision {restored.revision}: its "
                        f"{target} now sends requests to a version that answers differently from routes[0] "
                        f"({_target_words(now.routes[0].target)}): {words}; deploy what should serve now "
                        f"with Deploy{back}"
                    )
            if restored is None:
                to = "no deployment"
            elif restored.undeployed:
                to = f"revision {restored.revision} (no deployment)"
            else:
                to = f"revision {restored.revision}"
            record = DeploymentRecord(
                model=model,
                revision=latest.revision + 1,
                routes=restored.routes if restored else (),
                shadow=restored.shadow if restored else None,
                created_at=time.time(),
                created_by=actor,
                comment=f"rollback of revision {latest.revision} to {to}",
                rolled_back_from=latest.revision,
                previous_revision=restored.previous_revision if restored else 0,
            )
            txn.put(DEPLOYMENTS, (model, record.revision), encode_deployment(record))
            _touch(txn, fields, record)
            _prune(txn, record, self._history)
            result = read_as_current(txn, record)
        self._notify(model)
        return result
