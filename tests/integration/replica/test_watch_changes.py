"""Registry.WatchChanges: the registry's numbered change feed, replayed from the store, then live."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from serving_models import linear_model, upload

from tessera.v1 import common_pb2, registry_pb2_grpc
from tessera.v1 import registry_pb2 as pb
from tesserad.registry import Registry, Route, Target
from tesserad.registry.tables import RETIRED_NUMBERS
from tesserad.server import STORE_TABLES
from tesserad.store import BlobStore, Store
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.older_store import daemon_on
from tests.integration.registry.conftest import onnx_header, onnx_identity
from tests.integration.registry.conftest import upload as registry_upload


def _changes(channel: grpc.Channel, from_seq: int, count: int) -> list[pb.RegistryChange]:
    """The first `count` changes from `from_seq` (the caught-up marker left out)."""
    stream = registry_pb2_grpc.RegistryStub(channel).WatchChanges(
        pb.WatchChangesRequest(from_seq=from_seq), timeout=60
    )
    got: list[pb.RegistryChange] = []
    for response in stream:
        if response.HasField("caught_up"):
            continue
        got.append(response.change)
        if len(got) == count:
            stream.cancel()
            break
    return got


def _recorded(channel: grpc.Channel, seq: int) -> None:
    """Wait until the feed has recorded change `seq`. The feed compares a model's state with its
    last head, so commits made before it looked are one change: a test that counts changes lets
    each be recorded before the next commit."""
    _changes(channel, seq, 1)


def test_changes_arrive_in_order_with_the_state_after_each(channel: grpc.Channel) -> None:
    registry = registry_pb2_grpc.RegistryStub(channel)
    upload(channel, "linear", linear_model(1.0))
    _recorded(channel, 1)
    upload(channel, "linear", linear_model(2.0))
    _recorded(channel, 2)
    registry.SetAlias(pb.SetAliasRequest(model="linear", alias="production", version=1))
    _recorded(channel, 3)
    registry.Deploy(pb.DeployRequest(model="linear", routes=[pb.Route(alias="production", weight=100)]))
    _recorded(channel, 4)
    registry.SetAlias(pb.SetAliasRequest(model="linear", alias="production", version=2))
    _recorded(channel, 5)
    registry.DeleteModel(pb.DeleteModelRequest(name="linear", force=True))

    changes = _changes(channel, 0, 6)
    assert [c.seq for c in changes] == [1, 2, 3, 4, 5, 6]
    assert {c.model for c in changes} == {"linear"}
    assert [list(c.kinds) for c in changes] == [
        # An upload that creates its model registers version 1 in the same commit.
        [pb.CHANGE_KIND_MODEL_CREATED, pb.CHANGE_KIND_VERSION_REGISTERED],
        [pb.CHANGE_KIND_VERSION_REGISTERED],
        [pb.CHANGE_KIND_ALIAS_MOVED],
        [pb.CHANGE_KIND_DEPLOYMENT_CHANGED],
        [pb.CHANGE_KIND_ALIAS_MOVED, pb.CHANGE_KIND_DEPLOYMENT_CHANGED],
        [pb.CHANGE_KIND_MODEL_DELETED],
    ]
    moved = changes[4].state
    assert moved.latest_version == 2
    assert dict(moved.aliases) == {"production": 2}
    assert [r.resolved_version for r in moved.deployment.routes] == [2]
    assert [v.version for v in moved.versions] == [2]
    assert len(moved.versions[0].sha256) == 64
    assert not changes[5].HasField("state")


def test_a_watch_resumes_from_a_seq_and_then_follows_live(channel: grpc.Channel) -> None:
    upload(channel, "linear", linear_model(1.0))
    _recorded(channel, 1)
    upload(channel, "linear", linear_model(2.0))
    assert [c.seq for c in _changes(channel, 2, 1)] == [2]

    live: list[pb.RegistryChange] = []
    watcher = threading.Thread(target=lambda: live.extend(_changes(channel, 2, 2)))
    watcher.start()
    upload(channel, "linear", linear_model(3.0))
    watcher.join(60)
    assert [(c.seq, c.state.latest_version) for c in live] == [(2, 2), (3, 3)]


def _first(channel: grpc.Channel, from_seq: int, count: int) -> list[str]:
    stream = registry_pb2_grpc.RegistryStub(channel).WatchChanges(
        pb.WatchChangesRequest(from_seq=from_seq), timeout=60
    )
    got = []
    for response in stream:
        got.append(
            f"change {response.change.seq}"
            if response.HasField("change")
            else f"caught up {response.caught_up.seq}"
        )
        if len(got) == count:
            stream.cancel()
            return got
    return got


def _newest(channel: grpc.Channel) -> int:
    """The newest change once the feed has recorded every commit made so far."""
    stream = registry_pb2_grpc.RegistryStub(channel).WatchChanges(
        pb.WatchChangesRequest(from_seq=0), timeout=60
    )
    for response in stream:
        if response.HasField("caught_up"):
            stream.cancel()
            return response.caught_up.seq
    raise AssertionError("the watch ended before it caught up")


def test_the_caught_up_marker_follows_the_replay(channel: grpc.Channel) -> None:
    upload(channel, "linear", linear_model(1.0))
    _recorded(channel, 1)
    upload(channel, "linear", linear_model(2.0))
    _recorded(channel, 2)
    assert _first(channel, 0, 3) == ["change 1", "change 2", "caught up 2"]
    assert _first(channel, 2, 2) == ["change 2", "caught up 2"]
    assert _first(channel, 3, 1) == ["caught up 2"]


@pytest.mark.parametrize(
    ("from_seq", "code", "text"),
    [
        (-1, grpc.StatusCode.INVALID_ARGUMENT, "from_seq must be >= 0"),
        (5, grpc.StatusCode.FAILED_PRECONDITION, "newest change (1): give at most 2, or 0 for every"),
    ],
)
def test_a_seq_the_registry_never_gave_is_refused(
    channel: grpc.Channel, from_seq: int, code: grpc.StatusCode, text: str
) -> None:
    upload(channel, "linear", linear_model(1.0))
    with pytest.raises(grpc.RpcError) as raised:
        _changes(channel, from_seq, 1)
    assert raised.value.code() == code
    assert text in raised.value.details()


def test_a_replica_transport_past_the_enum_is_refused(channel: grpc.Channel) -> None:
    # A newer replica's transport this primary does not know: calling it over plaintext could
    # send its statistics requests in the clear to an address that serves TLS.
    request = pb.WatchChangesRequest(replica_address="127.0.0.1:50051", replica_transport=99)
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(registry_pb2_grpc.RegistryStub(channel).WatchChanges(request, timeout=60)))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == (
        "replica_transport: unknown value 99; use PLAINTEXT or TLS, or leave it unspecified for this "
        "daemon's own TLS settings to decide"
    )


def test_changes_survive_a_restart_and_numbering_goes_on(data_dir, spawn_daemon) -> None:
    first = spawn_daemon("--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--metrics-listen", "off")
    address = first.wait_serving()
    with grpc.insecure_channel(address) as channel:
        upload(channel, "linear", linear_model(1.0))
        _recorded(channel, 1)
    first.terminate()
    first.output()
    second = spawn_daemon("--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--metrics-listen", "off")
    with grpc.insecure_channel(second.wait_serving()) as channel:
        upload(channel, "linear", linear_model(2.0))
        assert [(c.seq, c.state.latest_version) for c in _changes(channel, 1, 2)] == [(1, 1), (2, 2)]


def _offline(data_dir: Path, commits: Callable[[Registry, BlobStore], object]) -> None:
    """Make `commits` to the stopped daemon's store: the feed compares the model with its head
    at the next start, so they come as one change (as commits the feed reads together, or made
    before a crash, do)."""
    store = Store.open(data_dir / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        blobs = BlobStore(data_dir / "blobs")
        registry = Registry(store, blobs, max_artifact_size=1 << 30, deployment_history=100)
        commits(registry, blobs)
        registry.close()
    finally:
        store.close()


def _register(registry: Registry, blobs: BlobStore, weight: float) -> None:
    registry.register_version(
        "linear", format="onnx", blob=blobs.put_bytes(linear_model(weight)), create_model_if_missing=True
    )


def _delete_model(registry: Registry) -> None:
    registry.delete_model("linear", force=True)


def _forget_retired_numbers(data_dir: Path) -> None:
    """Leave the store as a tesserad from before RETIRED_NUMBERS left a model's delete: a model
    created again under the name numbers from 1."""
    store = Store.open(data_dir / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            txn.delete_range(RETIRED_NUMBERS, ())
    finally:
        store.close()


@pytest.mark.parametrize("numbered", ["as-before", "on"])
def test_a_model_made_again_is_a_change(data_dir, numbered: str) -> None:
    """A model deleted and made again, in commits the feed did not record one by one (here: made
    while no daemon ran, as after a crash between commit and record), is one change that says so.
    Numbered as before (as a tesserad from before version numbers went on across a delete made
    it), the new version 1 is another artifact, which the change carries, so a follower never
    serves the deleted version 1's for it. Numbered on, its registration is told as such, not
    also as a version deleted."""
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        upload(daemon.channel(), "linear", linear_model(1.0))
        old_state = _changes(daemon.channel(), 1, 1)[0].state
        old = old_state.versions[0].sha256
    finally:
        daemon.stop()
    _offline(data_dir, lambda registry, _blobs: _delete_model(registry))
    if numbered == "as-before":
        _forget_retired_numbers(data_dir)
    _offline(data_dir, lambda registry, blobs: _register(registry, blobs, 2.0))
    version = 1 if numbered == "as-before" else 2

    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        assert _first(daemon.channel(), 2, 1) == ["change 2"]
        change = _changes(daemon.channel(), 2, 1)[0]
        assert list(change.kinds) == [
            pb.CHANGE_KIND_MODEL_DELETED,
            pb.CHANGE_KIND_MODEL_CREATED,
            pb.CHANGE_KIND_VERSION_REGISTERED,
        ]
        assert change.state.latest_version == version
        assert [v.version for v in change.state.versions] == [version]
        assert change.state.versions[0].sha256 not in ("", old)
        # What tells a follower that never reads this change's kinds (compacted away) of the new model.
        assert old_state.HasField("created_at")
        assert change.state.created_at.ToNanoseconds() > old_state.created_at.ToNanoseconds()
    finally:
        daemon.stop()


def _set_production(version: int) -> Callable[[Registry, BlobStore], object]:
    return lambda registry, _blobs: registry.set_alias("linear", "production", version)


def _deploy(registry: Registry, _blobs: BlobStore) -> None:
    registry.deploy("linear", [Route(Target(version=2), 100)])


_REGISTERED, _DELETED = pb.CHANGE_KIND_VERSION_REGISTERED, pb.CHANGE_KIND_VERSION_DELETED
_MOVED, _DEPLOYMENT = pb.CHANGE_KIND_ALIAS_MOVED, pb.CHANGE_KIND_DEPLOYMENT_CHANGED


@pytest.mark.parametrize(
    ("commits", "kinds"),
    [
        # The newest number grows, the count stays: a deletion was not told.
        (
            [lambda registry, _: registry.delete_version("linear", 1), lambda r, b: _register(r, b, 3.0)],
            [_DELETED, _REGISTERED],
        ),
        (
            [lambda r, b: _register(r, b, 3.0), lambda registry, _: registry.delete_version("linear", 3)],
            [_DELETED, _REGISTERED],
        ),
        # The aliases are as they were: no change at all was recorded.
        ([_set_production(1), _set_production(2)], [_MOVED]),
        # No deployment before, none after (the rollback of a first deployment): no change.
        ([_deploy, lambda registry, _: registry.rollback("linear")], [_DEPLOYMENT]),
        (
            [
                lambda registry, _: registry.delete_alias("linear", "production"),
                lambda registry, _: registry.delete_version("linear", 2),
            ],
            [_DELETED, _MOVED],
        ),
        (
            [
                lambda registry, _: _delete_model(registry),
                lambda r, b: _register(r, b, 3.0),
                lambda r, b: _register(r, b, 4.0),
                lambda registry, _: registry.delete_version("linear", 3),
            ],
            [pb.CHANGE_KIND_MODEL_DELETED, pb.CHANGE_KIND_MODEL_CREATED, _DELETED, _REGISTERED],
        ),
    ],
    ids=[
        "version-deleted-and-registered",
        "version-registered-and-deleted",
        "alias-moved-and-back",
        "deployed-and-rolled-back",
        "alias-and-version-deleted",
        "model-made-again-with-a-version-deleted",
    ],
)
def test_commits_read_as_one_change_report_every_kind(
    data_dir: Path, commits: list[Callable[[Registry, BlobStore], object]], kinds: list[int]
) -> None:
    """Commits the feed reads together (here: made while no daemon ran) are one change, whose
    kinds still name each kind of step they took, though its state may not show it."""
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        registry = registry_pb2_grpc.RegistryStub(daemon.channel())
        upload(daemon.channel(), "linear", linear_model(1.0))
        upload(daemon.channel(), "linear", linear_model(2.0))
        registry.SetAlias(pb.SetAliasRequest(model="linear", alias="production", version=2))
        newest = _newest(daemon.channel())
    finally:
        daemon.stop()
    _offline(data_dir, lambda registry, blobs: [commit(registry, blobs) for commit in commits])

    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        assert _first(daemon.channel(), newest + 1, 1) == [f"change {newest + 1}"]
        assert list(_changes(daemon.channel(), newest + 1, 1)[0].kinds) == kinds
    finally:
        daemon.stop()


def test_changes_past_the_history_are_compacted_to_each_models_newest(tmp_path) -> None:
    running = InProcessDaemon(daemon_settings(tmp_path / "data", **{"replica.change_history": 3})).start()
    try:
        channel = running.channel()
        registry = registry_pb2_grpc.RegistryStub(channel)
        steps = [
            lambda: upload(channel, "a", linear_model(1.0)),  # 1
            lambda: upload(channel, "b", linear_model(1.0)),  # 2
            lambda: upload(channel, "a", linear_model(2.0)),  # 3 supersedes 1
            lambda: registry.SetAlias(pb.SetAliasRequest(model="a", alias="production", version=1)),  # 4: 3
            lambda: upload(channel, "b", linear_model(2.0)),  # 5 supersedes 2
            lambda: registry.DeleteModel(pb.DeleteModelRequest(name="b", force=True)),  # 6: 5
            lambda: upload(channel, "c", linear_model(1.0)),  # 7
        ]
        for seq, step in enumerate(steps, start=1):
            step()
            _recorded(channel, seq)
        # Superseded and older than the newest 3 (seq <= 4): 1, 2 and 3 are gone. 4 is a's
        # newest, 5 is within the history, 6 is b's last word (its deletion).
        assert _first(channel, 0, 5) == ["change 4", "change 5", "change 6", "change 7", "caught up 7"]
        assert [c.seq for c in _changes(channel, 2, 2)] == [4, 5]  # a start inside the gap is fine
        replayed = {c.model: c for c in _changes(channel, 0, 4)}
        assert replayed["a"].state.latest_version == 2
        assert dict(replayed["a"].state.aliases) == {"production": 1}
        assert not replayed["b"].HasField("state")
        assert replayed["c"].state.latest_version == 1

        # The name used again: the tombstone is superseded like any change.
        upload(channel, "b", linear_model(3.0))  # 8; horizon 5
        _recorded(channel, 8)
        registry.SetAlias(pb.SetAliasRequest(model="c", alias="production", version=1))  # 9; horizon 6
        _recorded(channel, 9)
        assert [c.seq for c in _changes(channel, 0, 4)] == [4, 7, 8, 9]
    finally:
        running.stop()


def test_a_state_of_versions_with_2_mib_of_params_each_fits_one_message(channel: grpc.Channel) -> None:
    """A state carried every version its aliases resolve to, params included: three aliases on
    versions of 2 MiB of params each took a change past gRPC's 4 MiB, and the watch broke for
    every watcher. The state carries what serving needs; GetVersion has the params."""
    registry = registry_pb2_grpc.RegistryStub(channel)
    params = {f"p{j:03}": "x" * 6000 for j in range(348)}  # 2 MiB, the most a version takes
    for width in (4, 5, 6):
        artifact = onnx_identity(width)
        registry_upload(registry, onnx_header("m", artifact, params=params, metrics={"acc": 0.9}), artifact)
    for alias, version in (("a", 1), ("b", 2), ("c", 3)):
        registry.SetAlias(pb.SetAliasRequest(model="m", alias=alias, version=version))

    # Over the test's channel, which takes gRPC's default of 4 MiB a message: every change so far.
    stream = registry.WatchChanges(pb.WatchChangesRequest(from_seq=0), timeout=60)
    got = []
    for response in stream:
        if response.HasField("caught_up"):
            stream.cancel()
            break
        got.append(response.change)
    change = got[-1]
    assert dict(change.state.aliases) == {"a": 1, "b": 2, "c": 3}
    state = change.state
    assert [v.version for v in state.versions] == [1, 2, 3] and state.ByteSize() < 2**20
    for carried in state.versions:
        whole = registry.GetVersion(
            pb.GetVersionRequest(ref=common_pb2.VersionRef(model="m", version=carried.version))
        )
        assert carried.sha256 == whole.sha256 and carried.signature == whole.signature
        assert carried.size_bytes == whole.size_bytes and carried.format == whole.format
        assert not carried.params and not carried.metrics
        assert dict(whole.params) == params and dict(whole.metrics) == {"acc": 0.9}


def _replayed(channel: grpc.Channel) -> list[pb.RegistryChange]:
    """Every change the feed holds, replayed from the start up to the caught-up marker."""
    stream = registry_pb2_grpc.RegistryStub(channel).WatchChanges(
        pb.WatchChangesRequest(from_seq=0), timeout=60
    )
    got: list[pb.RegistryChange] = []
    for response in stream:
        if response.HasField("caught_up"):
            stream.cancel()
            break
        got.append(response.change)
    return got


def test_a_change_carries_the_deployment_s_warnings_as_get_deployment_does(data_dir: Path) -> None:
    with daemon_on(data_dir) as running:
        channel = running.channel()
        registry = registry_pb2_grpc.RegistryStub(channel)
        upload(channel, "linear", linear_model(1.0))
        upload(channel, "linear", linear_model(2.0))
        for alias, version in (("production", 1), ("canary", 2)):
            registry.SetAlias(pb.SetAliasRequest(model="linear", alias=alias, version=version))
        routes = [pb.Route(alias="production", weight=90), pb.Route(alias="canary", weight=10)]
        registry.Deploy(pb.DeployRequest(model="linear", routes=routes))
        assert not _replayed(channel)[-1].state.deployment.warnings
        # A promotion moves the canary's alias onto the version production serves.
        registry.SetAlias(pb.SetAliasRequest(model="linear", alias="canary", version=1))
        warnings = list(registry.GetDeployment(pb.GetDeploymentRequest(model="linear")).warnings)
        assert warnings and "resolve to version 1" in warnings[0]
        assert list(_replayed(channel)[-1].state.deployment.warnings) == warnings
    # Replayed from the store by the next daemon too.
    with daemon_on(data_dir) as running:
        assert list(_replayed(running.channel())[-1].state.deployment.warnings) == warnings


def _answers(stream: Any, until: Callable[[list[str]], bool]) -> list[str]:
    """The stream's answers as "kind seq", read until `until` says enough."""
    got: list[str] = []
    for response in stream:
        event = response.WhichOneof("event")
        got.append(f"{event} {getattr(response, event).seq}")
        if until(got):
            stream.cancel()
            break
    return got


def test_a_watch_that_asks_for_heartbeats_is_told_the_newest_change_whether_changes_flow_or_not(
    channel: grpc.Channel,
) -> None:
    registry = registry_pb2_grpc.RegistryStub(channel)
    upload(channel, "linear", linear_model(1.0))
    _recorded(channel, 1)
    upload(channel, "linear", linear_model(2.0))
    _recorded(channel, 2)
    stream = registry.WatchChanges(pb.WatchChangesRequest(from_seq=0, heartbeat_interval_ms=100), timeout=60)
    # Told the newest change before the replay sends it (a follower knows how far behind it is),
    # then again while no change flows.
    got = _answers(stream, lambda got: "caught_up 2" in got and got[-1].startswith("heartbeat"))
    assert got[0] == "heartbeat 2"
    assert [a for a in got if not a.startswith("heartbeat")] == ["change 1", "change 2", "caught_up 2"]
    assert set(got) == {"heartbeat 2", "change 1", "change 2", "caught_up 2"}

    stream = registry.WatchChanges(pb.WatchChangesRequest(from_seq=3, heartbeat_interval_ms=100), timeout=60)
    upload(channel, "linear", linear_model(3.0))
    # The newest change is 3 in any heartbeat after change 3 (which may be the first, when the
    # upload was recorded before the watch began).
    got = _answers(stream, lambda got: "change 3" in got and got[-1] == "heartbeat 3")
    assert got[0] in ("heartbeat 2", "heartbeat 3")

    # A watch that does not ask (a replica before heartbeats) gets none.
    assert _first(channel, 0, 3) == ["change 1", "change 2", "change 3"]


@pytest.mark.parametrize("interval_ms", [-1, 99])
def test_a_heartbeat_interval_under_100_ms_is_refused(channel: grpc.Channel, interval_ms: int) -> None:
    request = pb.WatchChangesRequest(heartbeat_interval_ms=interval_ms)
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(registry_pb2_grpc.RegistryStub(channel).WatchChanges(request, timeout=60)))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == (
        f"heartbeat_interval_ms must be 0 (no heartbeats) or at least 100, got {interval_ms}"
    )
