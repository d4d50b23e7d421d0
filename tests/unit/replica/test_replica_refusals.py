"""A primary's memory of the calls it refused its replicas: newest per address, bounded, expiring."""

from __future__ import annotations

from tesserad.replica.refusals import MAX_ADDRESS_CHARS, ReplicaRefusals


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_newest_refusal_of_each_address_comes_first() -> None:
    clock = _Clock()
    refusals = ReplicaRefusals(limit=4, keep_s=60, clock=clock, wall_clock=clock)
    refusals.note("a:1", "ipv4:10.0.0.1:5000", "tessera.v1.Registry/WatchChanges", "UNAUTHENTICATED", "no")
    clock.now += 1
    refusals.note("b:1", "ipv4:10.0.0.2:5000", "tessera.v1.Registry/DownloadVersion", "DATA_LOSS", "gone")
    clock.now += 1
    refusals.note(
        "a:1", "ipv4:10.0.0.1:5001", "tessera.v1.Registry/WatchChanges", "PERMISSION_DENIED", "role"
    )
    assert [(r.address, r.peer, r.code, r.time) for r in refusals.recent()] == [
        ("a:1", "ipv4:10.0.0.1:5001", "PERMISSION_DENIED", 1002.0),
        ("b:1", "ipv4:10.0.0.2:5000", "DATA_LOSS", 1001.0),
    ]


def test_the_oldest_address_gives_way_past_the_limit() -> None:
    refusals = ReplicaRefusals(limit=2)
    for address in ("a:1", "b:1", "c:1"):
        refusals.note(address, "peer", "rpc", "UNAUTHENTICATED", "no")
    assert [r.address for r in refusals.recent()] == ["c:1", "b:1"]


def test_a_refusal_expires_and_a_replica_that_follows_is_forgotten() -> None:
    clock = _Clock()
    refusals = ReplicaRefusals(keep_s=60, clock=clock)
    refusals.note("a:1", "peer", "rpc", "UNAUTHENTICATED", "no")
    clock.now += 30
    refusals.note("b:1", "peer", "rpc", "UNAUTHENTICATED", "no")
    refusals.note("c:1", "peer", "rpc", "UNAUTHENTICATED", "no")
    refusals.forget("c:1")
    assert [r.address for r in refusals.recent()] == ["b:1", "a:1"]
    clock.now += 30
    assert [r.address for r in refusals.recent()] == ["b:1"]
    clock.now += 30
    assert refusals.recent() == []


def test_an_announced_address_is_kept_short() -> None:
    refusals = ReplicaRefusals()
    refusals.note("x" * 10_000, "peer", "rpc", "UNAUTHENTICATED", "no")
    assert [len(r.address) for r in refusals.recent()] == [MAX_ADDRESS_CHARS]
