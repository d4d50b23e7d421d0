"""`client.models.watch_changes`: the registry's change feed (Registry.WatchChanges) from the SDK,
replayed, followed live, resumed across a daemon restart, and its bad starting points."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import pytest

import tessera
import tessera.aio
from tessera.v1 import registry_pb2 as pb
from tests.conftest import InProcessDaemon, daemon_settings

CREATED, REGISTERED, ALIAS_MOVED = (
    pb.CHANGE_KIND_MODEL_CREATED,
    pb.CHANGE_KIND_VERSION_REGISTERED,
    pb.CHANGE_KIND_ALIAS_MOVED,
)


def recorded(client: tessera.Client) -> list[int]:
    """The changes so far. A watch begins once the feed has recorded every earlier commit, so
    this also keeps the next commit from joining the same change."""
    return [c.seq for c in client.models.watch_changes(follow=False)]


def test_without_follow_the_changes_so_far_are_given_and_the_watch_ends(client, make_onnx):
    client.models.push("affine", make_onnx("a1"))
    assert recorded(client) == [1]  # the watch sees the commit made before it
    client.models.push("affine", make_onnx("a2", scale=2.0), set_alias="production")
    changes = list(client.models.watch_changes(follow=False))
    assert [(c.seq, c.model, list(c.kinds)) for c in changes] == [
        (1, "affine", [CREATED, REGISTERED]),  # one commit: the push made the model
        (2, "affine", [REGISTERED, ALIAS_MOVED]),
    ]
    assert changes[-1].state.latest_version == 2
    assert dict(changes[-1].state.aliases) == {"production": 2}
    assert [c.seq for c in client.models.watch_changes(from_seq=2, follow=False)] == [2]
    assert list(client.models.watch_changes(from_seq=3, follow=False)) == []  # nothing new yet


def test_with_follow_changes_committed_later_arrive_as_they_happen(client, make_onnx):
    client.models.push("affine", make_onnx("a1"))
    recorded(client)
    client.models.push("affine", make_onnx("a2", scale=2.0))
    arrived: queue.Queue[pb.RegistryChange] = queue.Queue()
    changes = client.models.watch_changes(from_seq=2)

    def watch() -> None:
        for change in changes:
            arrived.put(change)
            if change.seq == 3:
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert arrived.get(timeout=30).seq == 2  # replayed
    client.models.push("affine", make_onnx("a3", scale=3.0))
    assert arrived.get(timeout=30).seq == 3  # live
    watcher.join(30)
    assert not watcher.is_alive()


def test_a_follow_is_resumed_across_a_daemon_restart_without_a_repeat(tmp_path, make_onnx):
    data_dir = tmp_path / "data"
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    port = first.daemon.port
    retry = tessera.RetryPolicy(attempts=100, initial_backoff_s=0.05, max_backoff_s=0.5)
    arrived: queue.Queue[int] = queue.Queue()
    with tessera.Client(first.target, retry=retry) as client:
        client.models.push("affine", make_onnx("a1"))
        recorded(client)
        client.models.push("affine", make_onnx("a2", scale=2.0))

        def watch() -> None:
            for change in client.models.watch_changes():
                arrived.put(change.seq)
                if change.seq == 3:
                    return

        watcher = threading.Thread(target=watch)
        watcher.start()
        assert [arrived.get(timeout=30), arrived.get(timeout=30)] == [1, 2]
        first.stop(grace=5)
        second = InProcessDaemon(daemon_settings(data_dir, listen=f"127.0.0.1:{port}")).start()
        try:
            # Channels to one address share their connection, which backs off after the
            # restart's refusals: wait until it is up again before pushing (push is not retried).
            deadline = time.monotonic() + 60
            while not reachable(client) and time.monotonic() < deadline:
                time.sleep(0.1)
            client.models.push("affine", make_onnx("a3", scale=3.0))
            watcher.join(60)
            assert not watcher.is_alive()
        finally:
            second.stop()
    assert arrived.get_nowait() == 3
    assert arrived.empty()


def reachable(client: tessera.Client) -> bool:
    try:
        client.system.info()
    except tessera.Unavailable:
        return False
    return True


@pytest.mark.parametrize(
    ("from_seq", "error", "text"),
    [
        (-1, tessera.InvalidArgument, "from_seq must be >= 0, got -1"),
        (
            9,
            tessera.FailedPrecondition,
            "from_seq 9 is past this registry's newest change (1): give at most 2",
        ),
    ],
)
def test_a_start_the_registry_never_gave_is_refused(client, make_onnx, from_seq, error, text):
    client.models.push("affine", make_onnx("a1"))
    with pytest.raises(error) as raised:
        list(client.models.watch_changes(from_seq=from_seq, follow=False))
    assert text in raised.value.message


def test_the_asyncio_client_watches_the_same_feed(daemon, client, make_onnx):
    client.models.push("affine", make_onnx("a1"))

    async def run() -> list[int]:
        async with tessera.aio.Client(daemon.target) as aio_client:
            return [c.seq async for c in aio_client.models.watch_changes(follow=False)]

    assert asyncio.run(run()) == [1]
