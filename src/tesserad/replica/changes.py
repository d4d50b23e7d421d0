"""The registry's change feed: every change to where a model's requests can go, numbered.

The registry calls `on_change(model)` after each commit that may move a version, an alias or
the deployment. That only queues the name: one feed thread reads the model's serving state
(latest, aliases, deployment, the versions they resolve to), compares it with the model's
last recorded head, and appends a change (with the new head, in the same transaction) when
something moved. The changes live in the store and are numbered and fanned out by the same
EventLog that job events use, so a watcher replays from any sequence number and then follows
live with a bounded buffer. At start every model is compared with its head, so a change
committed just before a crash, and not yet recorded, is recorded then.

The newest `history` changes are kept in full (a log to read back); an older change that a
newer change of the same model supersedes is deleted (compaction, as in a compacted Kafka
topic), so the table stays about one row per model. Compaction loses nothing a follower
needs: every change carries its model's whole serving state, a watch from any seq still gets
the newest change of every model changed since, and a deleted model's last change stays until
the name is used again.

Commits to one model that land before the feed thread looks are one change (a follower needs
the state, not every step to it). A watch begins once the thread has recorded every commit
notified before it, so a client that committed and then watches sees its own commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tesserad.errors import FailedPrecondition, InvalidArgument, NotFound
from tesserad.registry import DeploymentRecord, Lineage, Registry, Route, Shadow, Target, VersionRecord
from tesserad.registry.records import SCHEMA, VERSION_KIND, decode_version
from tesserad.replica.refusals import ReplicaRefusals
from tesserad.store import ReadTxn, Store, WriteTxn, decode_record, encode_record
from tesserad.store.incarnation import store_incarnation
from tesserad.training.events import EventLog, JobEvent, decode_event, follow

log = logging.getLogger(__name__)

CHANGES = "registry_changes"
HEADS = "registry_change_heads"
# seq of each stored change that a newer change of its model supersedes, oldest first.
SUPERSEDED = "registry_changes_superseded"
TABLES = [CHANGES, HEADS, SUPERSEDED]

_CHANNEL = "registry"
# A watch waits at most this long for the feed to record the commits made before it began.
_SETTLE_TIMEOUT_S = 10.0
# Superseded changes deleted per recorded change at most: compaction keeps pace in small steps.
_COMPACT_BATCH = 64
# Keys of a head record besides the model's head: the seq of its newest change, and whether
# that change deleted the model (the head is then a tombstone).
_SEQ, _DELETED = "seq", "deleted"
_HEAD_KIND = "registry_change_head"

MODEL_CREATED = "model_created"
MODEL_DELETED = "model_deleted"
VERSION_REGISTERED = "version_registered"
VERSION_DELETED = "version_deleted"
ALIAS_MOVED = "alias_moved"
DEPLOYMENT_CHANGED = "deployment_changed"
SERVING_CONFIG_CHANGED = "serving_config_changed"


@dataclass(frozen=True)
class ServingState:
    """What a follower needs of a model to route and load its requests."""

    latest_version: int
    version_count: int
    aliases: dict[str, int]
    deployment: DeploymentRecord | None
    versions: tuple[VersionRecord, ...]
    # When the model was created: a model deleted and created again is another model, though its
    # versions, aliases and deployment may number as the old one's did. 0.0 in a change recorded
    # before changes carried it.
    created_at: float
    # Version number -> its saved serving config's fields (registry.serving_configs); none in a
    # change recorded before changes carried them.
    serving_configs: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Steps:
    """Counters of a model that only grow: they tell steps its serving state may not show (a
    version registered and another deleted, an alias moved and back, a deployment rolled back to
    none) when the feed reads several commits as one change. Kept in the head, not sent."""

    next_version: int
    alias_events: int
    # The newest deployment revision, one that rolled back to no deployment included; 0: none yet.
    deployment_revision: int
    # Where next_version started when the model was created (past 1 for a model created again):
    # a change that creates the model counts its registrations from there.
    first_version: int
    # How far next_version grew past numbers no version got: not registrations.
    numbers_skipped: int


@dataclass(frozen=True)
class Replica:
    """A replica following this registry: the address it announced, the authorization its
    watch presented ("" without one), and whether it said that address serves TLS (None: it
    did not say, as replicas before it could)."""

    address: str
    credential: str = field(repr=False)  # a bearer token: reprs end up in logs
    tls: bool | None


@dataclass(frozen=True)
class CaughtUp:
    """Every change numbered before the watch began has been sent; `seq` is the newest of them."""

    seq: int


@dataclass(frozen=True)
class Heartbeat:
    """Sent to a watch that asked, at once and then every interval: `seq` is the registry's newest
    change then, though the watch may not have sent the changes up to it yet."""

    seq: int


@dataclass(frozen=True)
class RegistryChange:
    seq: int
    time: float
    model: str
    kinds: tuple[str, ...]
    state: ServingState | None  # None: the model was deleted


def change_feed_versions(txn: ReadTxn) -> Iterator[tuple[object, object]]:
    """The (model, version) of every version the stored changes name (a deleted model's last
    changes are replayed to watchers), as stored, and the newest a head counted."""
    for _key, raw in txn.scan(CHANGES):
        change = decode_event(raw).data
        if change["state"] is not None:
            yield change["model"], change["state"]["latest_version"]
            for version in change["state"]["versions"]:
                yield change["model"], version["version"]
    for key, raw in txn.scan(HEADS):
        head = decode_record(raw, _HEAD_KIND, 1)[1]
        if "next_version" in head:
            yield str(key[0]), int(head["next_version"]) - 1


def read_state(registry: Registry, model: str) -> tuple[ServingState, Steps] | None:
    """The model's serving state and steps now; None when the model does not exist."""
    try:
        record = registry.get_model(model)
        try:
            deployment: DeploymentRecord | None = registry.get_deployment(model)
        except NotFound:
            deployment = None
        # Read after the deployment: a Deploy between the two reads is then told by the next
        # change's deployment, not only by its revision.
        revisions = registry.list_deployments(model, 1).items
    except NotFound:
        return None
    aliases = {name: number for name, number in record.aliases.items() if name != "latest"}
    wanted = {record.latest_version, *aliases.values()}
    if deployment is not None:
        wanted.update(r.resolved_version for r in deployment.routes)
        if deployment.shadow is not None:
            wanted.add(deployment.shadow.resolved_version)
    versions = []
    for number in sorted(wanted - {0}):
        try:
            versions.append(serving_version(registry.get_version(model, number)))
        except NotFound:
            continue  # deleted since the model was read: the next change says so
    state = ServingState(
        record.latest_version,
        record.version_count,
        aliases,
        deployment,
        tuple(versions),
        record.created_at,
        record.serving_configs,
    )
    steps = Steps(
        record.next_version,
        record.alias_events,
        revisions[0].revision if revisions else 0,
        record.first_version,
        record.numbers_skipped,
    )
    return state, steps


def serving_version(record: VersionRecord) -> VersionRecord:
    """What a follower needs of a version to load and serve it. Its params (2 MiB at most), metrics,
    text and lineage are left out: a change carries every version its model's aliases and routes
    resolve to, and must fit one answer; GetVersion answers the rest."""
    return replace(
        record,
        description="",
        params={},
        metrics={},
        tags={},
        lineage=Lineage(),
        aliases=(),
        alias_moved=None,
        alias_refused="",
        deployment_warnings=(),
    )


def _deployment_data(deployment: DeploymentRecord) -> dict[str, Any]:
    """Its routing, without the warnings read with it, which change with no change to it."""
    data = asdict(deployment)
    del data["warnings"]
    return data


def _head(state: ServingState) -> dict[str, Any]:
    deployment = state.deployment
    return {
        "latest_version": state.latest_version,
        "version_count": state.version_count,
        "aliases": state.aliases,
        "deployment": _deployment_data(deployment) if deployment is not None else None,
        "created_at": state.created_at,
        # Keyed as JSON keeps them: a head read back compares equal.
        "serving_configs": {str(version): config for version, config in state.serving_configs.items()},
    }


# A model before it exists: a commit that creates it and registers a version (an upload with
# create_model) is both a creation and a registration.
_NO_MODEL: dict[str, Any] = {
    "latest_version": 0,
    "version_count": 0,
    "aliases": {},
    "deployment": None,
    "serving_configs": {},
    **asdict(
        Steps(next_version=1, alias_events=0, deployment_revision=0, first_version=1, numbers_skipped=0)
    ),
}


def _kinds(before: dict[str, Any] | None, after: dict[str, Any] | None) -> tuple[str, ...]:
    if after is None:
        return () if before is None else (MODEL_DELETED,)
    kinds = []
    # A head written before heads kept created_at cannot tell; the model's next change records it.
    if before is not None and before.get("created_at", after["created_at"]) != after["created_at"]:
        # Deleted and created again since its previous change (commits the feed read as one, or
        # made before a crash): compared with the old model's head it might not differ at all.
        kinds.append(MODEL_DELETED)
        before = None
    if before is None:
        kinds.append(MODEL_CREATED)
        before = {**_NO_MODEL, "next_version": after["first_version"]}
    registered, deleted = _version_steps(before, after)
    if deleted:
        kinds.append(VERSION_DELETED)
    if registered:
        kinds.append(VERSION_REGISTERED)
    if after["aliases"] != before["aliases"] or _grew(before, after, "alias_events"):
        kinds.append(ALIAS_MOVED)
    if after["deployment"] != before["deployment"] or _grew(before, after, "deployment_revision"):
        kinds.append(DEPLOYMENT_CHANGED)
    # A head written before heads kept them had none to keep.
    if after.get("serving_configs", {}) != before.get("serving_configs", {}):
        kinds.append(SERVING_CONFIG_CHANGED)
    return tuple(kinds)


def _version_steps(before: dict[str, Any], after: dict[str, Any]) -> tuple[bool, bool]:
    """Whether versions were registered, and whether versions were deleted, between two heads."""
    if "next_version" not in before:
        # A head written before heads kept their steps: a registration hides a deletion with it.
        return (
            after["latest_version"] > before["latest_version"]
            or after["version_count"] > before["version_count"],
            after["version_count"] < before["version_count"],
        )
    # A head from before heads kept numbers_skipped was written before any number was skipped.
    registered = (after["next_version"] - after["numbers_skipped"]) - (
        before["next_version"] - before.get("numbers_skipped", 0)
    )
    return registered > 0, before["version_count"] + registered > after["version_count"]


def _grew(before: dict[str, Any], after: dict[str, Any], counter: str) -> bool:
    """Whether a counter of Steps grew; a head written before heads kept it cannot tell."""
    return counter in before and after[counter] > before[counter]


def _encode_state(state: ServingState | None) -> dict[str, Any] | None:
    if state is None:
        return None
    versions = []
    for version in state.versions:
        data = asdict(version)
        data.pop("aliases")
        data.pop("alias_moved")
        data.pop("alias_refused")
        data.pop("deployment_warnings")
        data.pop("same_bytes")
        versions.append(data)
    encoded = {**_head(state), "versions": versions}
    if state.deployment is not None:
        # Kept with the change though left out of the head: what GetDeployment warned of as the
        # feed read the state, told to followers and replays alike. Aliases, in the head, move
        # with them, so a change of warnings is a change recorded.
        encoded["deployment"]["warnings"] = list(state.deployment.warnings)
    return encoded


def _target(data: dict[str, Any]) -> Target:
    return Target(version=data["version"], alias=data["alias"])


def _decode_deployment(data: dict[str, Any] | None) -> DeploymentRecord | None:
    if data is None:
        return None
    shadow = data["shadow"]
    return DeploymentRecord(
        model=data["model"],
        revision=data["revision"],
        routes=tuple(Route(_target(r["target"]), r["weight"], r["resolved_version"]) for r in data["routes"]),
        shadow=Shadow(_target(shadow["target"]), shadow["percent"], shadow["resolved_version"])
        if shadow
        else None,
        created_at=data["created_at"],
        created_by=data["created_by"],
        comment=data["comment"],
        rolled_back_from=data["rolled_back_from"],
        previous_revision=data["previous_revision"],
        # A change recorded before changes kept them carries none.
        warnings=tuple(data.get("warnings", ())),
    )


def _decode_change(event: JobEvent) -> RegistryChange:
    data = event.data
    state = data["state"]
    return RegistryChange(
        seq=event.seq,
        time=event.time,
        model=data["model"],
        kinds=tuple(data["kinds"]),
        state=None
        if state is None
        else ServingState(
            latest_version=state["latest_version"],
            version_count=state["version_count"],
            aliases=state["aliases"],
            deployment=_decode_deployment(state["deployment"]),
            # A change recorded before the state left these out carries whole versions.
            versions=tuple(
                serving_version(decode_version(encode_record(VERSION_KIND, SCHEMA, v)))
                for v in state["versions"]
            ),
            created_at=state.get("created_at", 0.0),
            serving_configs={
                int(version): config for version, config in state.get("serving_configs", {}).items()
            },
        ),
    )


class ChangeFeed:
    """Records, numbers and streams the registry's changes (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        watch_buffer: int,
        history: int,
        refusals: ReplicaRefusals | None = None,
    ) -> None:
        """`refusals`: the replicas' calls refused lately; a replica that follows is forgotten there."""
        self._store = store
        self._refusals = refusals
        self._registry = registry
        self._history = history
        self._log = EventLog(store, watch_buffer, table=CHANGES)
        with store.read() as txn:
            last_seq = next(
                (int(key[1]) for key, _ in txn.scan(CHANGES, (_CHANNEL,), reverse=True, limit=1)), 0
            )
            # Given as the daemon took the store (open_for_writing); "" for a store taken otherwise,
            # which watchers read as a primary's that does not say.
            self.store_incarnation = store_incarnation(txn) or ""
        self._log.open_job(_CHANNEL, last_seq, ended=False)
        self._cond = threading.Condition()
        self._pending: dict[str, None] = {}  # insertion-ordered set of model names
        # Notifications queued so far, and how many of them the feed thread has recorded.
        self._notified = 0
        self._recorded = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="registry-changes", daemon=True)
        # Replicas following now (-> open streams): the primary merges their statistics.
        self._replicas: dict[Replica, int] = {}

    def start(self) -> None:
        """Compare every model with its head (catching up after a crash), then follow the registry."""
        self._registry.add_listener(self.on_change)
        with self._store.read() as txn:
            # A tombstone's model is gone, or back in the registry's names if it returned.
            names = {
                str(key[0])
                for key, raw in txn.scan(HEADS)
                if not decode_record(raw, _HEAD_KIND, 1)[1].get(_DELETED, False)
            }
        names.update(self._registry.model_names())
        for name in sorted(names):
            self.on_change(name)
        self._thread.start()

    def newest_seq(self) -> int:
        """The number of the newest change recorded (0: none yet)."""
        return self._log.last_seq(_CHANNEL)

    def on_change(self, model: str) -> None:
        with self._cond:
            self._pending[model] = None
            self._notified += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Stop recording and end every watcher (they resume against the next daemon)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self._log.shutdown()

    def settle(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) until every commit notified so far is recorded."""
        with self._cond:
            target = self._notified
            self._cond.wait_for(
                lambda: self._closing or self._recorded >= target or not self._thread.is_alive(),
                timeout,
            )

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing or bool(self._pending))
                if self._closing:
                    return
                models = list(self._pending)
                self._pending.clear()
                notified = self._notified
            for model in models:
                try:
                    self._record(model)
                except Exception:
                    log.exception("cannot record a registry change", extra={"model": model})
            with self._cond:
                self._recorded = notified
                self._cond.notify_all()

    def _record(self, model: str) -> None:
        read = read_state(self._registry, model)
        state = None if read is None else read[0]
        with self._store.read() as txn:
            raw = txn.get(HEADS, (model,))
        before = None if raw is None else decode_record(raw, _HEAD_KIND, 1)[1]
        # Heads written before compaction existed carry no seq: their change is never deleted.
        superseded: int | None = None if before is None else before.pop(_SEQ, None)
        if before is not None and before.pop(_DELETED, False):
            before = None
        after = None if read is None else {**_head(read[0]), **asdict(read[1])}
        kinds = _kinds(before, after)
        if not kinds:
            return

        def write_head(txn: WriteTxn, event: JobEvent) -> None:
            head = {_SEQ: event.seq, _DELETED: True} if after is None else {**after, _SEQ: event.seq}
            txn.put(HEADS, (model,), encode_record(_HEAD_KIND, 1, head))
            if superseded is not None:
                txn.put(SUPERSEDED, (superseded,), b"")
            self._compact(txn, event.seq - self._history)

        self._log.append(
            _CHANNEL,
            0,
            "change",
            {"model": model, "kinds": list(kinds), "state": _encode_state(state)},
            also=write_head,
        )
        # The next comparison must read this head.
        self._log.flush()

    @staticmethod
    def _compact(txn: WriteTxn, horizon: int) -> None:
        """Delete superseded changes numbered `horizon` or lower, a few per call."""
        done = []
        for key, _ in txn.scan(SUPERSEDED, (), limit=_COMPACT_BATCH):
            seq = int(key[0])
            if seq > horizon:
                break
            done.append(seq)
        for seq in done:
            txn.delete(CHANGES, (_CHANNEL, seq))
            txn.delete(SUPERSEDED, (seq,))

    def replicas(self) -> list[Replica]:
        """Each replica following this registry now, one per address.

        The credential is the one the replica's own watch presented; the primary presents it
        back when it asks that address for statistics, so a caller's token never goes to an
        address that someone else (any reader may watch) announced.
        """
        with self._cond:
            chosen: dict[str, Replica] = {}
            for replica in sorted(self._replicas, key=lambda r: (r.address, r.credential, str(r.tls))):
                chosen.setdefault(replica.address, replica)
            return [chosen[address] for address in sorted(chosen)]

    async def watch(
        self,
        from_seq: int,
        replica_address: str = "",
        credential: str = "",
        replica_tls: bool | None = None,
        heartbeat_s: float = 0.0,
    ) -> AsyncIterator[RegistryChange | CaughtUp | Heartbeat]:
        """Changes from `from_seq` (stored, then live); see the WatchChanges RPC for the errors.
        `credential`: the watching call's authorization ("" without one), kept with its address
        and `replica_tls` (whether the replica said that address serves TLS). `heartbeat_s`:
        a Heartbeat at once and then this often (0: none)."""
        if from_seq < 0:
            raise InvalidArgument(f"from_seq must be >= 0, got {from_seq}")
        await asyncio.to_thread(self.settle, _SETTLE_TIMEOUT_S)
        newest = self._log.last_seq(_CHANNEL)
        if from_seq > newest + 1:
            raise FailedPrecondition(
                f"from_seq {from_seq} is past this registry's newest change ({newest}): give at most "
                f"{newest + 1}, or 0 for every change (a follower holding changes past {newest} followed "
                "another registry: drop them and watch again with from_seq=0)"
            )
        replica = Replica(replica_address, credential, replica_tls)
        if replica_address:
            with self._cond:
                self._replicas[replica] = self._replicas.get(replica, 0) + 1
            if self._refusals is not None:
                self._refusals.forget(replica_address)
        changes = self._changes(from_seq, newest)
        events: AsyncGenerator[RegistryChange | CaughtUp | Heartbeat, None] = (
            _with_heartbeats(changes, heartbeat_s, self.newest_seq) if heartbeat_s else changes
        )
        try:
            async with contextlib.aclosing(changes), contextlib.aclosing(events):
                async for event in events:
                    yield event
        finally:
            if replica_address:
                with self._cond:
                    self._replicas[replica] -= 1
                    if not self._replicas[replica]:
                        del self._replicas[replica]

    async def _changes(self, from_seq: int, newest: int) -> AsyncGenerator[RegistryChange | CaughtUp, None]:
        """The changes from `from_seq`, with CaughtUp after `newest` (the newest as the watch began)."""
        caught_up = max(from_seq, 1) > newest
        if caught_up:
            yield CaughtUp(newest)
        async for event in follow(self._log, _CHANNEL, from_seq):
            yield _decode_change(event)
            if not caught_up and event.seq >= newest:
                caught_up = True
                yield CaughtUp(newest)


# Changes read ahead of a watch that asks for heartbeats (see _with_heartbeats).
_READ_AHEAD = 256


@dataclass(frozen=True)
class _Ended:
    """The end of the changes read ahead: the error that ended them, or None."""

    error: Exception | None


async def _with_heartbeats(
    events: AsyncIterator[RegistryChange | CaughtUp], interval_s: float, newest: Callable[[], int]
) -> AsyncGenerator[RegistryChange | CaughtUp | Heartbeat, None]:
    """`events`, with a Heartbeat of the `newest` change at once and then every `interval_s`, also
    between events that flow without a pause (a watcher behind is told how far)."""
    loop = asyncio.get_running_loop()
    yield Heartbeat(newest())
    due = loop.time() + interval_s
    # One task reads the events ahead, so that a heartbeat cuts short a wait for the next without
    # ending the iterator; one read is taken without a wait: a task and a timer per event cost the
    # loop ~40-300 us each, a replica replaying 100k changes seconds of the primary's time.
    ahead: asyncio.Queue[RegistryChange | CaughtUp | _Ended] = asyncio.Queue(_READ_AHEAD)
    reader = asyncio.create_task(_read_ahead(events, ahead))
    try:
        while True:
            read: RegistryChange | CaughtUp | _Ended | None
            try:
                read = ahead.get_nowait()
            except asyncio.QueueEmpty:
                if reader.done():
                    # It ended with no _Ended put: cancelled from inside `events`, or a
                    # BaseException. Heartbeats alone from here on would tell the watcher all is well.
                    raise _reader_gone(reader) from None
                try:
                    read = await asyncio.wait_for(ahead.get(), max(0.0, due - loop.time()))
                except TimeoutError:
                    read = None
            if loop.time() >= due:
                yield Heartbeat(newest())
                due = loop.time() + interval_s
            if isinstance(read, _Ended):
                if read.error is not None:
                    raise read.error
                return
            if read is not None:
                yield read
    finally:
        reader.cancel()
        await asyncio.wait([reader])


def _reader_gone(reader: asyncio.Task[None]) -> BaseException:
    """What ended `reader` (done, having put no _Ended), to raise to the watcher."""
    exc = None if reader.cancelled() else reader.exception()
    return exc or RuntimeError("the registry's changes stopped being read: their reader was cancelled")


async def _read_ahead(
    events: AsyncIterator[RegistryChange | CaughtUp], ahead: asyncio.Queue[RegistryChange | CaughtUp | _Ended]
) -> None:
    """Put `events` in `ahead` as they come (waiting while it is full), then how they ended."""
    try:
        async for event in events:
            await ahead.put(event)
    except Exception as exc:  # raised by _with_heartbeats, in order after the events before it
        await ahead.put(_Ended(exc))
        return
    await ahead.put(_Ended(None))
